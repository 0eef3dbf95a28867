//! Original audio under the translation (`original_audio: ducked | full`): each 20 ms frame
//! a party hears is the translation's frame (or silence) plus the other party's own voice at
//! a gain, mixed µ-law → linear → sum → µ-law through two lookup tables built at compile
//! time. Mixing a frame allocates nothing.

/// One Telnyx frame: 20 ms of µ-law at 8 kHz.
pub const FRAME: usize = 160;
/// Frames per `media` message when a party's voice is carried under the translation: 40 ms.
/// Telnyx takes 20 ms to 30 s per message; every message costs a WebSocket write (a
/// syscall and a JSON envelope), so two frames a message halve what ducked audio costs, for
/// 20 ms more delay on a voice that is only there as a cue
/// (docs/adr/0051-ducked-audio-in-40-ms-messages.md).
pub const FRAMES_PER_MESSAGE: usize = 2;
/// µ-law silence.
pub const SILENCE: u8 = 0xFF;

/// G.711 µ-law byte → 16-bit linear sample.
const fn decode(byte: u8) -> i16 {
    let byte = !byte;
    let sign = byte & 0x80;
    let exponent = ((byte >> 4) & 0x07) as i32;
    let mantissa = (byte & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// 16-bit linear sample → G.711 µ-law byte.
const fn encode(sample: i32) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let (sign, magnitude) = if sample < 0 {
        (0x80, -sample)
    } else {
        (0, sample)
    };
    let value = (if magnitude > CLIP { CLIP } else { magnitude }) + BIAS;
    let exponent = 7 - ((value >> 7) as u8).leading_zeros() as i32;
    let mantissa = (value >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}

static DECODE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = decode(i as u8);
        i += 1;
    }
    table
};

/// Indexed by the sample's top 14 bits (µ-law resolves nothing finer).
static ENCODE: [u8; 1 << 14] = {
    let mut table = [0u8; 1 << 14];
    let mut i = 0;
    while i < (1 << 14) {
        table[i] = encode(((i as i32) - (1 << 13)) << 2);
        i += 1;
    }
    table
};

#[inline]
pub fn to_linear(byte: u8) -> i16 {
    DECODE[byte as usize]
}

#[inline]
pub fn to_mulaw(sample: i32) -> u8 {
    let clamped = sample.clamp(i16::MIN as i32, i16::MAX as i32);
    ENCODE[((clamped >> 2) + (1 << 13)) as usize]
}

/// A gain in Q15 (32768 = 0 dB) from decibels.
pub fn gain_q15(db: f64) -> i32 {
    (10f64.powf(db / 20.0) * 32768.0).round() as i32
}

/// `out` (the translation's frame, or silence) plus `under` at `gain_q15`, in place.
pub fn mix_into(out: &mut [u8; FRAME], under: &[u8; FRAME], gain_q15: i32) {
    for (o, u) in out.iter_mut().zip(under.iter()) {
        let mixed = to_linear(*o) as i32 + ((to_linear(*u) as i32 * gain_q15) >> 15);
        *o = to_mulaw(mixed);
    }
}

/// Below this peak (16-bit linear, about −60 dBFS) the other party's voice, after the gain,
/// is not sent on its own: a listener hears nothing they could tell from silence, and the
/// leg is spared 50 frames a second of it (docs/adr/0047-ducked-audio-only-when-audible.md).
pub const AUDIBLE_PEAK: i32 = 32;

/// One call's gain for the other party's voice, as tables built once per leg: each µ-law
/// byte already scaled (linear), and already scaled and re-encoded (the frame played when
/// no translation is), so mixing a sample is two or three table reads and an add.
pub struct Gain {
    scaled: [i16; 256],
    alone: [u8; 256],
    /// Whether a sample is audible after the gain (the tests' reference for the
    /// thresholds below).
    #[cfg(test)]
    audible: [bool; 256],
    /// The same as two thresholds, for a check the compiler turns into vector instructions
    /// (every inbound frame of a ducked call is checked: a table read per byte cost about
    /// 900 instructions a frame). A µ-law sample's magnitude falls as its low seven bits
    /// rise, so for each sign the audible samples are those whose low bits are at most a
    /// threshold; 0x7F (silence) never is. Indexed by the sign bit.
    loudest_quiet: [u8; 2],
}

impl Gain {
    pub fn new(gain_q15: i32) -> Self {
        let mut scaled = [0i16; 256];
        let mut alone = [SILENCE; 256];
        let mut audible = [false; 256];
        for byte in 0..=255u8 {
            let value = (to_linear(byte) as i32 * gain_q15) >> 15;
            scaled[byte as usize] = value.clamp(i16::MIN as i32, i16::MAX as i32) as i16;
            alone[byte as usize] = to_mulaw(value);
            audible[byte as usize] = value.abs() >= AUDIBLE_PEAK;
        }
        // Per sign, the lowest low-bits value that is not audible: everything below it is
        // (magnitude is monotonic in the low bits, asserted by the tests for every gain).
        let mut loudest_quiet = [0x7F; 2];
        for (sign, threshold) in loudest_quiet.iter_mut().enumerate() {
            *threshold = (0..=0x7Fu8)
                .find(|low| !audible[(((sign as u8) << 7) | low) as usize])
                .unwrap_or(0x7F);
        }
        Self {
            scaled,
            alone,
            #[cfg(test)]
            audible,
            loudest_quiet,
        }
    }

    /// Whether any sample of `frame` is audible after the gain (see [`AUDIBLE_PEAK`]).
    pub fn audible(&self, frame: &[u8]) -> bool {
        // The smallest low bits seen per sign, without a branch per byte.
        let (mut negative, mut positive) = (0x7Fu8, 0x7Fu8);
        for &b in frame {
            let low = b & 0x7F;
            let high = ((b as i8) >> 7) as u8; // 0xFF when the sign bit is set
            positive = positive.min(low | (!high & 0x7F));
            negative = negative.min(low | (high & 0x7F));
        }
        negative < self.loudest_quiet[0] || positive < self.loudest_quiet[1]
    }

    /// [`Self::audible`] one table read per sample (the tests' reference).
    #[cfg(test)]
    fn audible_by_table(&self, frame: &[u8]) -> bool {
        frame.iter().any(|&b| self.audible[b as usize])
    }

    /// `out` (the translation's frame) plus `under` at this gain, in place.
    pub fn mix_into(&self, out: &mut [u8; FRAME], under: &[u8; FRAME]) {
        for (o, u) in out.iter_mut().zip(under.iter()) {
            *o = to_mulaw(to_linear(*o) as i32 + self.scaled[*u as usize] as i32);
        }
    }

    /// `under` at this gain with no translation over it.
    pub fn alone_into(&self, out: &mut [u8; FRAME], under: &[u8; FRAME]) {
        for (o, u) in out.iter_mut().zip(under.iter()) {
            *o = self.alone[*u as usize];
        }
    }
}

/// A frame from up to `FRAME` bytes, padded with silence.
pub fn frame_of(bytes: &[u8]) -> [u8; FRAME] {
    let mut frame = [SILENCE; FRAME];
    let n = bytes.len().min(FRAME);
    frame[..n].copy_from_slice(&bytes[..n]);
    frame
}

/// One cadence of the North American ringback tone (440 Hz + 480 Hz, 2 s on, 4 s off) at
/// about −19 dBm0: what the agent hears while the remote party's phone rings.
pub fn ringback_cadence() -> &'static [u8] {
    static CADENCE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    CADENCE.get_or_init(|| {
        (0..6 * 8000)
            .map(|n| {
                if n >= 2 * 8000 {
                    return SILENCE;
                }
                let t = n as f64 / 8000.0;
                let tau = 2.0 * std::f64::consts::PI;
                let sample = 1800.0 * ((tau * 440.0 * t).sin() + (tau * 480.0 * t).sin());
                to_mulaw(sample as i32)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_audibility_check_agrees_with_the_table_for_every_gain() {
        for db in [-60.0, -30.0, -18.0, -12.0, -6.0, 0.0, 6.0] {
            let gain = Gain::new(gain_q15(db));
            for byte in 0..=255u8 {
                // Monotonic per sign: the thresholds describe the table exactly.
                assert_eq!(
                    gain.audible(&[byte]),
                    gain.audible_by_table(&[byte]),
                    "{db} dB, {byte:#x}"
                );
            }
            // Frames mixing quiet and loud samples of both signs, and empty ones.
            let mut seed = 0x2545_F491_4F6C_DD1Du64;
            for _ in 0..2_000 {
                let len = (seed % 200) as usize;
                let frame: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        // Mostly near-silence (low bits high), sometimes anything.
                        let b = (seed >> 24) as u8;
                        if seed.is_multiple_of(8) { b } else { b | 0x70 }
                    })
                    .collect();
                assert_eq!(
                    gain.audible(&frame),
                    gain.audible_by_table(&frame),
                    "{db} dB"
                );
            }
        }
    }

    #[test]
    fn tables_round_trip_every_mulaw_byte() {
        for byte in 0..=255u8 {
            let back = to_mulaw(to_linear(byte) as i32);
            // 0x7F and 0xFF are both zero; everything else round-trips exactly.
            assert_eq!(to_linear(back), to_linear(byte), "{byte:#x}");
        }
    }

    #[test]
    fn ducking_scales_the_other_voice_and_keeps_the_translation() {
        let gain = gain_q15(-18.0);
        assert!((gain - 4125).abs() <= 1, "{gain}");
        let loud = [to_mulaw(8000); FRAME];
        let mut out = [SILENCE; FRAME];
        mix_into(&mut out, &loud, gain);
        let level = to_linear(out[0]) as f64;
        assert!((level / 8000.0 - 0.126).abs() < 0.01, "{level}");
        let mut speech = [to_mulaw(-3000); FRAME];
        mix_into(&mut speech, &[SILENCE; FRAME], gain);
        assert_eq!(to_linear(speech[0]), to_linear(to_mulaw(-3000)));
        let mut clipped = [to_mulaw(32000); FRAME];
        mix_into(&mut clipped, &loud, gain_q15(0.0));
        assert!(to_linear(clipped[0]) > 30000);
    }

    #[test]
    fn the_gain_tables_mix_as_the_arithmetic_does() {
        for db in [-18.0, -6.0, 0.0] {
            let q15 = gain_q15(db);
            let gain = Gain::new(q15);
            let under: [u8; FRAME] = std::array::from_fn(|i| (i * 37 % 256) as u8);
            let speech: [u8; FRAME] = std::array::from_fn(|i| (i * 11 % 256) as u8);
            let (mut by_table, mut by_hand) = (speech, speech);
            gain.mix_into(&mut by_table, &under);
            mix_into(&mut by_hand, &under, q15);
            assert_eq!(by_table, by_hand, "{db} dB");
            let (mut alone, mut on_silence) = ([0u8; FRAME], [SILENCE; FRAME]);
            gain.alone_into(&mut alone, &under);
            mix_into(&mut on_silence, &under, q15);
            assert_eq!(alone, on_silence, "{db} dB alone");
        }
    }

    #[test]
    fn only_a_voice_audible_after_the_gain_counts_as_audible() {
        let ducked = Gain::new(gain_q15(-18.0));
        assert!(!ducked.audible(&[SILENCE; FRAME]));
        // Line noise at about −50 dBFS is below −60 dBFS once ducked by 18 dB...
        let mut noise = [SILENCE; FRAME];
        noise[7] = to_mulaw(-100);
        assert!(!ducked.audible(&noise));
        // ...but heard at full level.
        assert!(Gain::new(gain_q15(0.0)).audible(&noise));
        // Speech at −32 dBFS (about 800) is heard ducked; one sample is enough.
        let mut word = [SILENCE; FRAME];
        word[159] = to_mulaw(800);
        assert!(ducked.audible(&word));
        // The threshold sits where the scaled peak crosses AUDIBLE_PEAK.
        for byte in 0..=255u8 {
            let scaled = (to_linear(byte) as i32 * gain_q15(-18.0)) >> 15;
            assert_eq!(
                ducked.audible(&[byte]),
                scaled.abs() >= AUDIBLE_PEAK,
                "{byte:#x}"
            );
        }
    }
}
