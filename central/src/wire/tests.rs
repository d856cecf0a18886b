use super::*;

fn samples() -> Vec<Frame> {
    vec![
        Frame::Hello {
            purpose: Purpose::Operate,
            serial: [1, 2, 3, 4, 5, 6, 7, 8],
        },
        Frame::Hello {
            purpose: Purpose::Transact,
            serial: [9; 8],
        },
        Frame::Command {
            header: [0x00, 0x82, 0x01, 0x02],
            data: vec![0x7C, 0x00],
        },
        Frame::Command {
            header: [0x0C, 0xDB, 0x3F, 0xFF],
            data: Vec::new(),
        },
        Frame::Response {
            data: vec![1, 2, 3],
            sw: 0x9000,
        },
        Frame::Response {
            data: Vec::new(),
            sw: 0x6982,
        },
        Frame::Ready,
        Frame::Message(vec![0x85, 0x01, 0xAA]),
        Frame::Receipt(Vec::new()),
        Frame::Done {
            key_set_id: [7; 16],
            expires: 1_900_000_000,
        },
        Frame::Close,
        Frame::Hello {
            purpose: Purpose::Personalize,
            serial: [0xA5; 8],
        },
        Frame::RelayChallenge {
            challenge: [3; RELAY_CHALLENGE_LEN],
            unit_certificate_hash: [4; 48],
        },
        Frame::RelayAuth {
            public_key: [5; RELAY_PUBLIC_KEY_LEN],
            signature: [6; RELAY_SIGNATURE_LEN],
        },
        Frame::Personalized {
            journal_id: 42,
            certificate: vec![0x30, 0x82, 0x01],
        },
        Frame::Direct(DirectTicket([0x5A; DIRECT_TICKET_LEN])),
        Frame::HandedOver { wait_seconds: 95 },
        Frame::EnterTan {
            header: [0x00, 0x20, 0x00, 0x82],
            digits: 10,
        },
        Frame::Error {
            code: ErrorCode::Refused,
            reason: "module revoked".into(),
        },
    ]
}

#[test]
fn every_frame_round_trips() {
    for frame in samples() {
        let bytes = frame.encode();
        let length = Frame::check_length(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(length, bytes.len() - 4);
        assert_eq!(Frame::decode_payload(&bytes[4..]), Ok(frame.clone()));
        assert_eq!(read_frame(&mut &bytes[..]).unwrap(), frame);
    }
}

#[test]
fn lengths_outside_the_limit_are_refused() {
    assert_eq!(Frame::check_length([0; 4]), Err(FrameError::BadLength(0)));
    let too_long = (MAX_FRAME as u32 + 1).to_be_bytes();
    assert_eq!(
        Frame::check_length(too_long),
        Err(FrameError::BadLength(MAX_FRAME + 1))
    );
    assert_eq!(
        Frame::check_length((MAX_FRAME as u32).to_be_bytes()),
        Ok(MAX_FRAME)
    );
}

#[test]
fn malformed_bodies_get_precise_errors() {
    assert_eq!(
        Frame::decode_payload(&[0x01, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(FrameError::UnsupportedVersion(2))
    );
    assert_eq!(
        Frame::decode_payload(&[0x01, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(FrameError::BadBody("HELLO"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x01, 1, 1, 0]),
        Err(FrameError::BadBody("HELLO"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x02, 0, 0xA4]),
        Err(FrameError::BadBody("COMMAND"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x03, 0x90]),
        Err(FrameError::BadBody("RESPONSE"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x04, 0]),
        Err(FrameError::BadBody("READY"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x07; 10]),
        Err(FrameError::BadBody("DONE"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x09, 0, 99]),
        Err(FrameError::BadBody("ERROR"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x0D; 48]),
        Err(FrameError::BadBody("DIRECT"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x0D; 50]),
        Err(FrameError::BadBody("DIRECT"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x0E, 0]),
        Err(FrameError::BadBody("HANDED OVER"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x0E]),
        Err(FrameError::BadBody("HANDED OVER"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x0F, 0, 0x20, 0, 0x82]),
        Err(FrameError::BadBody("ENTER TAN"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x7F]),
        Err(FrameError::UnknownType(0x7F))
    );
    assert_eq!(Frame::decode_payload(&[]), Err(FrameError::BadLength(0)));
}

#[test]
fn random_payloads_never_panic() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 40) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|i| (state.rotate_left(i as u32 * 8) & 0xFF) as u8)
            .collect();
        let _ = Frame::decode_payload(&bytes);
    }
}

#[test]
fn an_error_reason_is_cut_to_fit() {
    let frame = Frame::Error {
        code: ErrorCode::Internal,
        reason: "é".repeat(5000),
    };
    let bytes = frame.encode();
    assert!(bytes.len() <= 4 + 3 + 1024);
    let Ok(Frame::Error { reason, .. }) = Frame::decode_payload(&bytes[4..]) else {
        panic!("error frame does not decode");
    };
    assert!(reason.chars().all(|c| c == 'é'));
}

#[test]
fn relay_frames_have_exact_lengths() {
    assert_eq!(
        Frame::decode_payload(&[0x0A; 80]),
        Err(FrameError::BadBody("RELAY CHALLENGE"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x0A; 82]),
        Err(FrameError::BadBody("RELAY CHALLENGE"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x0B; 1 + 97 + 95]),
        Err(FrameError::BadBody("RELAY AUTH"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x0B; 1 + 97 + 97]),
        Err(FrameError::BadBody("RELAY AUTH"))
    );
    // A journal id with no certificate is not a result.
    assert_eq!(
        Frame::decode_payload(&[0x0C, 0, 0, 0, 0, 0, 0, 0, 1]),
        Err(FrameError::BadBody("PERSONALIZED"))
    );
    assert_eq!(
        Frame::decode_payload(&[0x0C, 0, 1]),
        Err(FrameError::BadBody("PERSONALIZED"))
    );
}

#[test]
fn the_relay_digest_binds_challenge_serial_and_unit() {
    use sha2::{Digest, Sha384};
    let challenge = [1u8; RELAY_CHALLENGE_LEN];
    let serial = [2u8; SERIAL_LEN];
    let unit = [3u8; 48];
    let mut expected = Vec::new();
    expected.extend_from_slice(b"imprint v1 relay");
    expected.extend_from_slice(&challenge);
    expected.extend_from_slice(&serial);
    expected.extend_from_slice(&unit);
    let digest = relay_auth_digest(&challenge, &serial, &unit);
    assert_eq!(digest[..], Sha384::digest(&expected)[..]);
    // Each input changes the digest.
    assert_ne!(relay_auth_digest(&[9; 32], &serial, &unit), digest);
    assert_ne!(relay_auth_digest(&challenge, &[9; 8], &unit), digest);
    assert_ne!(relay_auth_digest(&challenge, &serial, &[9; 48]), digest);
}

#[test]
fn a_direct_ticket_is_never_printed() {
    let printed = format!(
        "{:?}",
        Frame::Direct(DirectTicket([0x5A; DIRECT_TICKET_LEN]))
    );
    assert_eq!(printed, "Direct(DirectTicket(<secret>))");
}
