//! kneo-server's stored records (what `RedisStore` keeps as bytes): decoding
//! never panics, and what decodes re-encodes to the same bytes and decodes
//! again to the same record.
#![no_main]

use kneo_server::idempotency::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Record::decode(data) {
        let bytes = record.encode();
        assert_eq!(bytes, data, "{record:?}");
        assert_eq!(Record::decode(&bytes).as_ref(), Ok(&record));
    }
});
