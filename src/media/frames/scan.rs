//! A byte scanner for Telnyx `media` frames, the one message that arrives 50 times a second
//! per track: it reads `event`, `sequence_number` and `media.{track,chunk,payload}` in one
//! pass over the bytes, borrowing the strings, and checks the rest is well-formed JSON
//! without building anything. It answers only where serde would give the same answer; for
//! anything it is not sure about (another event, an escape, a duplicate key, an unusual type,
//! a number with an exponent, deep nesting, invalid JSON) it returns `None` and the caller
//! takes serde's path, which decides what is valid and which error it is (ADR 0045). So does
//! a frame it read that then fails (a payload that is not base64).

use super::MediaFields;

/// Nesting the scanner follows inside fields it skips; deeper goes to serde (whose own limit
/// is 128).
const MAX_DEPTH: usize = 16;

/// The fields of a `media` frame, or `None` when serde must decide.
pub(crate) fn media(raw: &str) -> Option<MediaFields<'_>> {
    let mut scan = Scanner { raw, at: 0 };
    scan.whitespace();
    scan.eat(b'{')?;
    let mut event = None;
    let mut sequence_number = None;
    let mut fields = MediaFields::default();
    scan.whitespace();
    if scan.peek() == Some(b'}') {
        // `{}` has no event: serde's error.
        return None;
    }
    loop {
        scan.whitespace();
        let key = scan.string()?;
        scan.whitespace();
        scan.eat(b':')?;
        scan.whitespace();
        match key {
            "event" if event.is_none() => event = Some(scan.string()?),
            "sequence_number" if sequence_number.is_none() => {
                sequence_number = Some(scan.counter()?);
            }
            "media" if !fields.media => {
                fields.media = true;
                scan.media_body(&mut fields)?;
            }
            // A second `event`, `media` or `sequence_number` is serde's to refuse.
            "event" | "sequence_number" | "media" => return None,
            _ => scan.skip_value(0)?,
        }
        scan.whitespace();
        match scan.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    scan.whitespace();
    if scan.at != raw.len() || event? != "media" {
        return None;
    }
    fields.sequence_number = sequence_number.flatten();
    Some(fields)
}

/// The bytes that end the plain run of a JSON string: its closing quote, an escape, or a
/// control byte (invalid JSON).
static ENDS_STRING: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

struct Scanner<'a> {
    raw: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.raw.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// JSON's four whitespace bytes.
    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string without escapes, borrowed. A control byte is invalid JSON and an escape
    /// needs unescaping: both are serde's.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let rest = self.bytes().get(start..)?;
        // Keys and values here are short (names, numbers, a stream id): one pass, a table
        // lookup a byte, is cheaper than a vectorised search's set-up (and than three
        // comparisons a byte: a tenth of the scanner's instructions).
        let len = rest.iter().position(|&b| ENDS_STRING[usize::from(b)])?;
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        self.at = start + len + 1;
        // Both ends are at ASCII quotes, so on character boundaries.
        self.raw.get(start..start + len)
    }

    /// The payload string, borrowed, with only its end found: a control byte or an escape
    /// in it (invalid JSON, or text serde must unescape) is not looked for, because neither
    /// is base64, so the decoder refuses the frame and the caller asks serde.
    fn payload(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        // Only the closing quote is looked for: an escape leaves a backslash in the slice,
        // which is not base64 either.
        let end = memchr::memchr(b'"', &self.bytes()[start..])?;
        self.at = start + end + 1;
        self.raw.get(start..start + end)
    }

    /// A counter as serde's `Counter` reads it: a string parsed as `u64` (anything else in
    /// it is `None`, as there), or a plain non-negative integer that fits. Signs, fractions,
    /// exponents, `null` and booleans are left to serde.
    fn counter(&mut self) -> Option<Option<u64>> {
        match self.peek()? {
            b'"' => Some(self.string()?.parse().ok()),
            b'0'..=b'9' => {
                let start = self.at;
                self.digits();
                let digits = &self.raw[start..self.at];
                // JSON has no leading zeros; 19 digits always fit in a u64.
                if (digits.len() > 1 && digits.starts_with('0')) || digits.len() > 19 {
                    return None;
                }
                Some(Some(digits.parse().ok()?))
            }
            _ => None,
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    /// The `media` object: `track`, `chunk` and `payload` read, anything else skipped.
    fn media_body(&mut self, fields: &mut MediaFields<'a>) -> Option<()> {
        self.eat(b'{')?;
        self.whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Some(());
        }
        let (mut track, mut chunk, mut payload) = (false, false, false);
        loop {
            self.whitespace();
            let key = self.string()?;
            self.whitespace();
            self.eat(b':')?;
            self.whitespace();
            match key {
                "track" if !track => {
                    track = true;
                    fields.track = Some(self.string()?);
                }
                "chunk" if !chunk => {
                    chunk = true;
                    fields.chunk = self.counter()?;
                }
                "payload" if !payload => {
                    payload = true;
                    fields.payload = Some(self.payload()?);
                }
                "track" | "chunk" | "payload" => return None,
                _ => self.skip_value(1)?,
            }
            self.whitespace();
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// Steps over one well-formed JSON value of a field nobody reads.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.skip_container(depth, b'}', true),
            b'[' => self.skip_container(depth, b']', false),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn skip_container(&mut self, depth: usize, close: u8, keyed: bool) -> Option<()> {
        self.at += 1;
        self.whitespace();
        if self.peek() == Some(close) {
            self.at += 1;
            return Some(());
        }
        loop {
            self.whitespace();
            if keyed {
                self.string()?;
                self.whitespace();
                self.eat(b':')?;
                self.whitespace();
            }
            self.skip_value(depth + 1)?;
            self.whitespace();
            match self.next()? {
                b',' => {}
                byte if byte == close => return Some(()),
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes().get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }

    /// JSON's number grammar, without an exponent (left to serde).
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        match self.peek() {
            Some(b'e' | b'E') => None,
            _ => Some(()),
        }
    }
}
