use super::*;

const OPENSSL_3: &str = "\
Doing 384 bits sign ecdsa's for 3s: 3301 384 bits ECDSA signs in 3.00s
Doing 384 bits verify ecdsa's for 3s: 4401 384 bits ECDSA verify in 3.00s
version: 3.0.15
built on: Tue Sep  3 13:38:47 2024 UTC
options: bn(64,64)
compiler: gcc -fPIC -pthread -m64 -Wa,--noexecstack -Wall
CPUINFO: OPENSSL_ia32cap=0x7ffaf3bfffebffff:0x29c67af
                              sign    verify    sign/s verify/s
 384 bits ecdsa (nistp384)   0.0009s   0.0007s   1100.3   1467.0
";

#[test]
fn parses_openssl_3_output() {
    let rates = parse_openssl_speed(OPENSSL_3).expect("parse");
    assert_eq!(rates.sign_per_s, 1100.3);
    assert_eq!(rates.verify_per_s, 1467.0);
}

#[test]
fn parses_compact_spacing() {
    let rates = parse_openssl_speed(" 384 bits ecdsa (nistp384) 0.0009s 0.0007s 1100 1467\n")
        .expect("parse");
    assert_eq!(rates.sign_per_s, 1100.0);
    assert_eq!(rates.verify_per_s, 1467.0);
}

#[test]
fn rejects_output_without_the_line() {
    for output in [
        "",
        "Doing 384 bits sign ecdsa's for 3s: 3301 384 bits ECDSA signs in 3.00s\n",
        " 256 bits ecdsa (nistp256)   0.0001s   0.0001s  30000.0  10000.0\n",
        " 384 bits ecdsa (nistp384)   0.0009s   0.0007s\n",
    ] {
        assert!(
            matches!(
                parse_openssl_speed(output),
                Err(HostError::OpensslUnparsable { .. })
            ),
            "{output:?}"
        );
    }
}

#[test]
fn measures_our_stack() {
    let (sign, verify) = crypto_rates(Duration::from_millis(50)).expect("rates");
    assert!(sign > 0.0 && sign.is_finite());
    assert!(verify > 0.0 && verify.is_finite());
}

fn ms(values: &[u64]) -> Vec<Duration> {
    values.iter().map(|&v| Duration::from_millis(v)).collect()
}

#[test]
fn timings_of_a_sample() {
    assert_eq!(Timings::of(&[]), None);
    let one = Timings::of(&ms(&[7])).expect("one sample");
    assert_eq!(
        (one.count, one.median, one.p90, one.min, one.max),
        (1, ms(&[7])[0], ms(&[7])[0], ms(&[7])[0], ms(&[7])[0])
    );
    // Ten values 1..=10 in any order: median 5.5, p90 the 9th value.
    let t = Timings::of(&ms(&[10, 3, 1, 9, 2, 8, 4, 7, 5, 6])).expect("ten samples");
    assert_eq!(t.count, 10);
    assert_eq!(t.median, Duration::from_micros(5500));
    assert_eq!(t.p90, Duration::from_millis(9));
    assert_eq!(
        (t.min, t.max),
        (Duration::from_millis(1), Duration::from_millis(10))
    );
    // Eleven values: p90 is the 10th (nearest rank: ceil(0.9 × 11) = 10).
    let t = Timings::of(&ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])).expect("eleven");
    assert_eq!(t.median, Duration::from_millis(6));
    assert_eq!(t.p90, Duration::from_millis(10));
}

#[test]
fn floor_adds_round_trips_and_crypto() {
    let rates = P384Rates {
        sign_per_s: 1000.0,
        verify_per_s: 500.0,
        ecdh_per_s: 250.0,
        keygen_per_s: 2000.0,
    };
    // 4 × 1 ms + 9 × 2 ms + 2 × 4 ms + 3 × 0.5 ms = 31.5 ms.
    let crypto = PERSONALIZATION_OPS.time_at(&rates);
    assert_eq!(crypto, Duration::from_micros(31_500));
    assert_eq!(
        floor(6, Duration::from_micros(100), crypto),
        Duration::from_micros(32_100)
    );
    let none = P384Ops {
        sign: 0,
        verify: 0,
        ecdh: 0,
        keygen: 0,
    };
    assert_eq!(none.time_at(&rates), Duration::ZERO);
    let broken = P384Rates {
        sign_per_s: 0.0,
        ..rates
    };
    assert_eq!(PERSONALIZATION_OPS.time_at(&broken), Duration::MAX);
    assert_eq!(floor(6, Duration::MAX, crypto), Duration::MAX);
}

#[test]
fn measures_key_agreement_and_generation() {
    let ecdh = ecdh_rate(Duration::from_millis(20)).expect("ECDH rate");
    let keygen = keygen_rate(Duration::from_millis(20)).expect("keygen rate");
    assert!(ecdh > 0.0 && ecdh.is_finite());
    assert!(keygen > 0.0 && keygen.is_finite());
}

#[test]
fn relay_bench_compares_the_same_personalization_both_ways() {
    let bench = relay::compare(2).expect("relay bench");
    assert_eq!(bench.runs, 2);
    let flows: Vec<_> = bench.rows.iter().map(|row| row.flow).collect();
    assert_eq!(flows, relay::Flow::ALL);
    for row in &bench.rows {
        assert_eq!(row.timings.count, 2, "{row:?}");
        assert!(row.counts.module_apdus > 0, "{row:?}");
        assert!(row.counts.unit_apdus > 0, "{row:?}");
    }
    let direct = bench.row(relay::Flow::Direct).expect("direct").counts;
    let relayed = bench.row(relay::Flow::Relayed).expect("relayed").counts;
    // The channel is end to end: the unit sends the module the same APDUs
    // either way (five for a first personalization).
    assert_eq!(direct.unit_apdus, 5);
    assert_eq!(relayed.unit_apdus, direct.unit_apdus);
    assert_eq!(direct.module_apdus, direct.unit_apdus);
    assert_eq!(direct.frames, None);
    // The relay adds its own SELECT, for the serial it presents in HELLO …
    assert_eq!(relayed.module_apdus, direct.module_apdus + 1);
    // … and the frames: a COMMAND/RESPONSE pair per APDU, plus HELLO, RELAY
    // CHALLENGE, RELAY AUTH and PERSONALIZED.
    assert_eq!(relayed.frames, Some(2 * relayed.unit_apdus + 4));
    let ratio = bench.ratio(relay::Flow::Relayed).expect("ratio");
    assert!(ratio.is_finite() && ratio > 0.0, "{ratio}");
    // Claim 15: the unit adds its sealed offer; the module also sees the
    // relay's SELECT; the frames add HANDED OVER, DIRECT and a second
    // PERSONALIZED.
    let handed = bench
        .row(relay::Flow::HandedOver)
        .expect("handed over")
        .counts;
    assert_eq!(handed.unit_apdus, direct.unit_apdus + 1);
    assert_eq!(handed.module_apdus, direct.module_apdus + 2);
    assert_eq!(handed.frames, Some(2 * handed.unit_apdus + 4 + 3));
    assert!(bench.ratio(relay::Flow::HandedOver).is_some());
}
