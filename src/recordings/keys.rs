//! Object keys: immutable and tenant-scoped. The only place a recording's key is built.
//!
//! `orgs/{org}/calls/{call or "none"}/recordings/{recording}/v{n}.{ext}` for stored
//! versions and `incoming/{org}/{recording}/v{n}-{nonce}.{ext}` for the staging key a
//! presigned PUT writes to (one global `incoming/` prefix, so one sweep or one R2 lifecycle
//! rule clears abandoned staging objects). Every segment is checked: only `[A-Za-z0-9_-]`, 1–64 bytes, so no
//! `/`, `..`, `%`, `\`, control character or empty segment can move a key out of its prefix.

use std::fmt;

use uuid::Uuid;

use super::format::AudioFormat;

use crate::ids::{CallId, OrgId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key segment {0:?} is empty, too long, or has characters other than A-Z a-z 0-9 _ -")]
    BadSegment(String),
    #[error("version must be 1 or more")]
    BadVersion,
}

/// A checked key segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment(String);

impl Segment {
    pub fn new(text: &str) -> Result<Self, KeyError> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(KeyError::BadSegment(text.to_owned()))
        }
    }

    fn uuid(id: impl Into<Uuid>) -> Self {
        Self(id.into().to_string())
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where every stored version of one organisation lives.
pub fn organisation_prefix(organisation_id: OrgId) -> String {
    format!("orgs/{}/", Segment::uuid(organisation_id))
}

/// Where direct uploads of one organisation land before `complete`.
pub fn staging_prefix(organisation_id: OrgId) -> String {
    format!("{STAGING_ROOT}{}/", Segment::uuid(organisation_id))
}

/// The one prefix of every staging object.
pub const STAGING_ROOT: &str = "incoming/";

/// The immutable key of one stored version.
pub fn version_key(
    organisation: &str,
    call: Option<&str>,
    recording: &str,
    version: i32,
    format: AudioFormat,
) -> Result<String, KeyError> {
    if version < 1 {
        return Err(KeyError::BadVersion);
    }
    let organisation = Segment::new(organisation)?;
    let call = Segment::new(call.unwrap_or("none"))?;
    let recording = Segment::new(recording)?;
    Ok(format!(
        "orgs/{organisation}/calls/{call}/recordings/{recording}/v{version}.{}",
        format.extension()
    ))
}

/// [`version_key`] from ids (which are always valid segments).
pub fn version_key_for(
    organisation_id: OrgId,
    call_id: Option<CallId>,
    recording_id: Uuid,
    version: i32,
    format: AudioFormat,
) -> Result<String, KeyError> {
    version_key(
        &organisation_id.to_string(),
        call_id.map(|c| c.to_string()).as_deref(),
        &recording_id.to_string(),
        version,
        format,
    )
}

/// Where a presigned PUT writes before `complete` copies it to its version key. The nonce
/// makes the staging key unguessable from the version key.
pub fn staging_key_for(
    organisation_id: OrgId,
    recording_id: Uuid,
    version: i32,
    format: AudioFormat,
) -> Result<String, KeyError> {
    if version < 1 {
        return Err(KeyError::BadVersion);
    }
    let nonce = Segment::new(&Uuid::new_v4().simple().to_string())?;
    Ok(format!(
        "{}{}/v{version}-{nonce}.{}",
        staging_prefix(organisation_id),
        Segment::uuid(recording_id),
        format.extension()
    ))
}

/// True when `key` is inside one of the organisation's prefixes and has no path tricks: a
/// last check before any delete or presign.
pub fn belongs_to(key: &str, organisation_id: OrgId) -> bool {
    let rest = key
        .strip_prefix(&organisation_prefix(organisation_id))
        .or_else(|| key.strip_prefix(&staging_prefix(organisation_id)));
    rest.is_some_and(|rest| {
        !rest.is_empty()
            && rest.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout() {
        let org = OrgId::from(Uuid::nil());
        let rec = Uuid::from_u128(7);
        let call = CallId::from(Uuid::from_u128(9));
        let key = version_key_for(org, Some(call), rec, 3, AudioFormat::Wav).unwrap();
        assert_eq!(
            key,
            format!("orgs/{org}/calls/{call}/recordings/{rec}/v3.wav")
        );
        let key = version_key_for(org, None, rec, 1, AudioFormat::Mp3).unwrap();
        assert_eq!(
            key,
            format!("orgs/{org}/calls/none/recordings/{rec}/v1.mp3")
        );
        assert!(belongs_to(&key, org));
        assert!(!belongs_to(&key, OrgId::from(Uuid::from_u128(1))));
        let staging = staging_key_for(org, rec, 2, AudioFormat::Flac).unwrap();
        assert!(staging.starts_with(&format!("incoming/{org}/{rec}/v2-")));
        assert!(staging.ends_with(".flac") && belongs_to(&staging, org));
    }

    #[test]
    fn segments_that_could_escape_are_refused() {
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../x",
            "a\\b",
            "a%2fb",
            "a b",
            "a\nb",
            "ä",
            "a.b",
            &"x".repeat(65),
        ] {
            assert!(
                version_key(bad, None, "rec", 1, AudioFormat::Wav).is_err(),
                "{bad:?} accepted as organisation"
            );
            assert!(version_key("org", Some(bad), "rec", 1, AudioFormat::Wav).is_err());
            assert!(version_key("org", None, bad, 1, AudioFormat::Wav).is_err());
        }
        assert_eq!(
            version_key("org", None, "rec", 0, AudioFormat::Wav),
            Err(KeyError::BadVersion)
        );
        let org = OrgId::from(Uuid::nil());
        for escaping in [
            format!("orgs/{org}/../other/x.wav"),
            format!("orgs/{org}/"),
            format!("orgs/{org}//x.wav"),
            format!("orgs/{org}/a/./x.wav"),
            format!("orgs/{org}x/y.wav"),
            "orgs/other/x.wav".to_string(),
        ] {
            assert!(!belongs_to(&escaping, org), "{escaping} accepted");
        }
    }
}
