//! Audio sniffing of uploaded recordings: the format comes from the bytes, never from the
//! declared type, and only a handful of leading bytes decide.
#![no_main]

use callbridge::recordings::audio::{self, AudioFormat, SNIFF_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sniffed = AudioFormat::sniff(data);
    // The first SNIFF_LEN bytes decide: what follows them never changes the answer.
    let head = &data[..data.len().min(SNIFF_LEN)];
    assert_eq!(sniffed, AudioFormat::sniff(head));
    if let Some(format) = sniffed {
        assert_eq!(AudioFormat::from_content_type(format.content_type()), Some(format));
        assert!(audio::declared_matches(format, format));
    }
    if let Ok(declared) = std::str::from_utf8(data)
        && let Some(format) = AudioFormat::from_content_type(declared)
    {
        let _ = format.extension();
    }
});
