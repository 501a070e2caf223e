//! What a server (or something posing as one) sends back through the guard:
//! messages decoded and taken apart as the masking path does, and a masked
//! row rebuilt from the decoded values decodes to the same values.
#![no_main]

use agentguard::pg::codec::{self, tag};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = codec::decode(&mut buf, 1 << 20) {
        match msg.tag() {
            tag::ROW_DESCRIPTION => {
                let _ = codec::row_description(&msg);
            }
            tag::DATA_ROW => {
                // Ranges index the whole message (tag and length included).
                if let Ok(ranges) = codec::data_row(&msg) {
                    let values: Vec<Option<&[u8]>> = ranges
                        .iter()
                        .map(|r| r.clone().map(|r| &msg.raw[r]))
                        .collect();
                    let rebuilt = codec::build_data_row(values.iter().copied());
                    let mut again = BytesMut::from(&rebuilt[..]);
                    let msg2 = codec::decode(&mut again, 1 << 21)
                        .expect("a rebuilt row decodes")
                        .expect("whole");
                    let ranges2 = codec::data_row(&msg2).expect("a rebuilt row parses");
                    let values2: Vec<Option<&[u8]>> = ranges2
                        .iter()
                        .map(|r| r.clone().map(|r| &msg2.raw[r]))
                        .collect();
                    assert_eq!(values, values2);
                }
            }
            tag::ERROR_RESPONSE => {
                let _ = codec::error_fields(&msg);
            }
            tag::READY_FOR_QUERY => {
                let _ = codec::ready_for_query_status(&msg);
            }
            _ => {}
        }
    }
});
