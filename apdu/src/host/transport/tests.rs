use super::*;

/// A card that answers every command with 256 bytes and "61 00": more follows, forever.
struct EndlessCard {
    calls: u32,
}

impl Transport for EndlessCard {
    fn transmit(&mut self, _: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.calls += 1;
        let mut response = vec![0xAA; 256];
        response.extend_from_slice(&[0x61, 0x00]);
        Ok(response)
    }
}

#[test]
fn endless_get_response_is_cut_off() {
    let mut link = CardLink::new(EndlessCard { calls: 0 });
    let err = link.send([0, 0xCA, 0xDF, 0x21], &[]).unwrap_err();
    assert!(matches!(err, TransportError::TooLarge(_)), "{err}");
    assert!(
        link.transport_mut().calls <= 258,
        "{}",
        link.transport_mut().calls
    );
}

/// A card that echoes the command's data back, split into 61xx pieces of 100 bytes.
struct SplittingEcho {
    pending: Vec<u8>,
}

impl Transport for SplittingEcho {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        if command[1] != ins::GET_RESPONSE {
            let command =
                crate::iso::Command::parse(command).map_err(|_| TransportError::ShortResponse)?;
            self.pending = command.data.to_vec();
        }
        let take = self.pending.len().min(100);
        let mut response: Vec<u8> = self.pending.drain(..take).collect();
        let left = self.pending.len();
        response.extend_from_slice(&if left == 0 {
            [0x90, 0x00]
        } else {
            [0x61, left.min(0xFF) as u8]
        });
        Ok(response)
    }
}

#[test]
fn get_response_pieces_are_joined_and_counted() {
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let mut link = CardLink::new(SplittingEcho {
        pending: Vec::new(),
    });
    let response = link.send([0, 0xDB, 0x3F, 0xFF], &data).unwrap();
    assert_eq!(response.sw, sw::OK);
    assert_eq!(response.data, data);
    assert_eq!(link.command_count(), 1);
    assert_eq!(link.apdu_count(), 10);
}

#[test]
fn encodings_follow_iso_7816_3() {
    assert_eq!(
        encode_extended([0, 0xCA, 0xDF, 0x21], &[]),
        [0, 0xCA, 0xDF, 0x21, 0, 0, 0]
    );
    assert_eq!(
        encode_extended([0, 0xDB, 0x3F, 0xFF], &[1, 2]),
        [0, 0xDB, 0x3F, 0xFF, 0, 0, 2, 1, 2, 0, 0]
    );
    assert_eq!(
        encode_short([0, 0xA4, 4, 0], &[9], true),
        [0, 0xA4, 4, 0, 1, 9, 0]
    );
    assert_eq!(
        encode_short([0x10, 0xDB, 0x3F, 0xFF], &[9], false),
        [0x10, 0xDB, 0x3F, 0xFF, 1, 9]
    );
}
