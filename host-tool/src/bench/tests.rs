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
