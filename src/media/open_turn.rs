//! The words of a track's open turn that AssemblyAI has made final (`word_is_final`): held
//! instead of their audio (ADR 0059), carried over when the session drops mid-turn, put
//! before the next final turn of the session that follows, or stored on their own when no
//! final turn comes (or when the turn had ended and only its formatted version was still to
//! come). Synchronous, on the track's clock throughout.

use crate::providers::assemblyai::Word;

/// Words kept for one track.
#[derive(Debug, Default)]
pub struct OpenTurn {
    /// The final words of the current session's open turn, from its latest partial.
    current: Vec<Word>,
    /// That turn's `turn_order` in the current session.
    current_order: u64,
    /// AssemblyAI ended that turn (`end_of_turn`) and its formatted version is still to
    /// come: if the session drops now, the words are a whole turn, not the start of one.
    current_ended: bool,
    /// Whole turns whose session dropped before their formatted version came, oldest first:
    /// stored before the track's next turn.
    ended: Vec<TurnWords>,
    /// Final words of turns that sessions left open when they dropped, oldest first.
    carried: Vec<Word>,
    /// Where the oldest carried words come from (session id, `turn_order`): their
    /// identity if they are stored on their own.
    carried_from: Option<(String, u64)>,
}

/// A turn to store: its identity, its text and its words on the track's clock (a final
/// turn, or words no final turn took).
#[derive(Debug, PartialEq)]
pub struct TurnWords {
    pub session_id: String,
    pub turn_order: u64,
    pub text: String,
    pub words: Vec<Word>,
}

/// Moves a session's word times (from the start of its audio) to the track's clock.
fn on_track_clock(mut word: Word, base_ms: u64) -> Word {
    word.start += base_ms;
    word.end += base_ms;
    word
}

/// The words' texts, as an unformatted transcript joins them.
pub fn joined(words: &[Word]) -> String {
    let mut text = String::new();
    for word in words {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&word.text);
    }
    text
}

impl OpenTurn {
    /// A partial turn of the current session, whose audio began at `base_ms` on the
    /// track's clock (or its unformatted end, `end_of_turn`, when the formatted one is
    /// what the bridge stores). Its final words (they come first: a word is final before
    /// the next one is) replace the ones kept from its last partial. Returns where the last
    /// of them ends: the audio before it need not be held for replay.
    pub fn partial(
        &mut self,
        turn_order: u64,
        mut words: Vec<Word>,
        base_ms: u64,
        end_of_turn: bool,
    ) -> Option<u64> {
        let finals = words.iter().take_while(|w| w.word_is_final).count();
        words.truncate(finals);
        self.current_order = turn_order;
        self.current_ended = end_of_turn;
        self.current.clear();
        self.current
            .extend(words.into_iter().map(|w| on_track_clock(w, base_ms)));
        self.current.last().map(|w| w.end)
    }

    /// The current session dropped (or was given up) while its turn was open: its final
    /// words wait for the next session's final turn.
    pub fn session_dropped(&mut self, session_id: &str) {
        if self.current.is_empty() {
            return;
        }
        if std::mem::take(&mut self.current_ended) {
            let words = std::mem::take(&mut self.current);
            self.ended.push(TurnWords {
                session_id: session_id.to_owned(),
                turn_order: self.current_order,
                text: joined(&words),
                words,
            });
            return;
        }
        if self.carried.is_empty() {
            self.carried_from = Some((session_id.to_owned(), self.current_order));
        }
        self.carried.append(&mut self.current);
    }

    /// Words carried from dropped sessions, if any: shown before the current session's
    /// partials, so a caption does not lose the start of its sentence.
    pub fn carried_text(&self) -> Option<String> {
        (!self.carried.is_empty()).then(|| joined(&self.carried))
    }

    /// A final turn of the current session, with its words already on the track's clock:
    /// the carried words go before them, and before its transcript their text (a
    /// formatted transcript covers only the current session's part).
    pub fn finish(&mut self, words: Vec<Word>, transcript: String) -> (Vec<Word>, String) {
        self.current.clear();
        self.current_ended = false;
        self.carried_from = None;
        if self.carried.is_empty() {
            return (words, transcript);
        }
        let mut all = std::mem::take(&mut self.carried);
        let mut text = joined(&all);
        if !transcript.trim().is_empty() {
            text.push(' ');
            text.push_str(&transcript);
        }
        all.extend(words);
        (all, text)
    }

    /// The track's clock moved by `delta_ms` (its origin settled): so do the words kept.
    pub fn shift(&mut self, delta_ms: i64) {
        for word in self.current.iter_mut().chain(&mut self.carried) {
            word.start = word.start.saturating_add_signed(delta_ms);
            word.end = word.end.saturating_add_signed(delta_ms);
        }
    }

    /// Whole turns a dropped session ended but never sent formatted, oldest first: to be
    /// stored before anything the track says next.
    pub fn take_ended(&mut self) -> Vec<TurnWords> {
        std::mem::take(&mut self.ended)
    }

    /// The track is finished: final words no final turn took (whole turns never sent
    /// formatted, then what was carried or still open when the session ended), each a turn
    /// of its own, in order.
    pub fn leftovers(&mut self, session_id: &str) -> Vec<TurnWords> {
        self.session_dropped(session_id);
        let mut turns = self.take_ended();
        if let Some((session_id, turn_order)) = self.carried_from.take() {
            let words = std::mem::take(&mut self.carried);
            turns.push(TurnWords {
                session_id,
                turn_order,
                text: joined(&words),
                words,
            });
        }
        turns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(text: &str, start: u64, end: u64, word_is_final: bool) -> Word {
        Word {
            text: text.to_owned(),
            start,
            end,
            confidence: 0.9,
            word_is_final,
        }
    }

    fn texts(words: &[Word]) -> Vec<(&str, u64, u64)> {
        words
            .iter()
            .map(|w| (w.text.as_str(), w.start, w.end))
            .collect()
    }

    #[test]
    fn a_partial_keeps_its_final_words_on_the_tracks_clock() {
        let mut open = OpenTurn::default();
        let words = vec![
            word("one", 0, 300, true),
            word("two", 300, 600, true),
            word("three", 600, 900, false),
        ];
        assert_eq!(open.partial(0, words, 1000, false), Some(1600));
        assert_eq!(
            open.partial(0, vec![word("one", 0, 300, false)], 1000, false),
            None
        );
        assert!(
            open.current.is_empty(),
            "a later partial replaces the earlier"
        );
        assert_eq!(open.leftovers("s1"), vec![], "nothing final, nothing left");
    }

    #[test]
    fn words_of_a_dropped_session_go_before_the_next_final_turn() {
        let mut open = OpenTurn::default();
        open.partial(
            3,
            vec![word("hello", 0, 300, true), word("there", 300, 500, false)],
            1000,
            false,
        );
        open.session_dropped("s1");
        assert_eq!(open.carried_text().as_deref(), Some("hello"));
        // The new session's audio begins where the held audio began.
        let next = vec![on_track_clock(word("world", 0, 400, true), 1300)];
        let (words, text) = open.finish(next, "World.".to_owned());
        assert_eq!(text, "hello World.");
        assert_eq!(
            texts(&words),
            vec![("hello", 1000, 1300), ("world", 1300, 1700)]
        );
        assert_eq!(open.carried_text(), None);
        assert_eq!(open.leftovers("s2"), vec![], "taken by the final turn");
    }

    #[test]
    fn words_no_final_turn_took_are_left_over_under_their_first_sessions_identity() {
        let mut open = OpenTurn::default();
        let (a, b) = (word("a", 0, 100, true), word("b", 100, 200, false));
        open.partial(3, vec![a, b], 0, false);
        open.session_dropped("s1");
        // The second session drops too, mid-turn, after more final words.
        open.partial(0, vec![word("c", 0, 100, true)], 500, false);
        open.session_dropped("s2");
        open.partial(0, vec![word("d", 0, 100, true)], 900, false);
        let left = open.leftovers("s3");
        assert_eq!(left.len(), 1, "{left:?}");
        let ids = (left[0].session_id.as_str(), left[0].turn_order);
        assert_eq!((ids, left[0].text.as_str()), (("s1", 3), "a c d"));
        assert_eq!(
            texts(&left[0].words),
            vec![("a", 0, 100), ("c", 500, 600), ("d", 900, 1000)]
        );
        assert_eq!(open.leftovers("s3"), vec![], "once");
    }

    #[test]
    fn a_turn_ended_but_not_yet_formatted_is_a_whole_turn_when_its_session_drops() {
        let mut open = OpenTurn::default();
        let ended = vec![word("all", 0, 100, true), word("done", 100, 200, true)];
        assert_eq!(open.partial(4, ended, 1000, true), Some(1200));
        open.session_dropped("s1");
        assert_eq!(open.carried_text(), None, "not the start of the next turn");
        // The next session's turn is its own.
        let next = vec![on_track_clock(word("next", 0, 100, true), 1200)];
        let (words, text) = open.finish(next, "Next.".to_owned());
        assert_eq!((words.len(), text.as_str()), (1, "Next."));
        let stored_first = open.take_ended();
        assert_eq!(stored_first.len(), 1);
        let ids = (
            stored_first[0].session_id.as_str(),
            stored_first[0].turn_order,
        );
        assert_eq!(
            (ids, stored_first[0].text.as_str()),
            (("s1", 4), "all done")
        );
        assert_eq!(open.leftovers("s2"), vec![]);
    }

    #[test]
    fn a_drop_with_no_final_words_carries_nothing() {
        let mut open = OpenTurn::default();
        open.partial(0, vec![word("x", 0, 100, false)], 0, false);
        open.session_dropped("s1");
        assert_eq!(open.carried_text(), None);
        let (words, text) = open.finish(Vec::new(), String::new());
        assert!(words.is_empty() && text.is_empty());
        assert!(open.take_ended().is_empty());
    }
}
