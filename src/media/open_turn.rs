//! The words of a track's open turn that AssemblyAI has made final (`word_is_final`): held
//! instead of their audio (ADR 0059), carried over when the session drops mid-turn, put
//! before the next final turn of the session that follows, or stored on their own when no
//! final turn comes (or when the turn had ended and only its formatted version was still to
//! come). Synchronous, on the track's clock throughout.

use std::collections::VecDeque;

use crate::providers::assemblyai::Word;

/// A pause at least this long between the words carried from a dropped session and the
/// next session's first word ended the turn they were in (AssemblyAI's default
/// `min_end_of_turn_silence_when_confident`, and the simulator's rule): they are stored on
/// their own rather than put before the next turn.
pub const PAUSE_ENDS_TURN_MS: u64 = 400;

/// Words kept for one track.
#[derive(Debug, Default)]
pub struct OpenTurn {
    /// The final words of the current session's open turn, from its latest partial.
    current: Vec<Word>,
    /// That turn's `turn_order` in the current session.
    current_order: u64,
    /// Final words of turns that sessions left open when they dropped, oldest first: they
    /// go before the current session's next turn.
    carried: Vec<Word>,
    /// Where the oldest carried words come from (session id, `turn_order`): their
    /// identity if they are stored on their own.
    carried_from: Option<(String, u64)>,
    /// Turns the current session ended unformatted (`end_of_turn`), the first with the
    /// carried words before it, oldest first: their formatted versions, which the bridge
    /// stores, are still to come.
    awaiting: VecDeque<Awaiting>,
    /// Whole turns no formatted version will come for (their session dropped, or a later
    /// turn came first), oldest first: stored before anything the track says next.
    ended: Vec<TurnWords>,
}

#[derive(Debug)]
struct Awaiting {
    /// Its identity if stored on its own: the carried words' first session's, else its
    /// own session's.
    identity: (String, u64),
    turn_order: u64,
    /// How many of `words` were carried from dropped sessions.
    carried: usize,
    words: Vec<Word>,
}

impl Awaiting {
    /// The words carried into it from dropped sessions, without its own: what another
    /// end of the same turn starts with.
    fn into_carried(mut self) -> Vec<Word> {
        self.words.truncate(self.carried);
        self.words
    }

    fn into_turn(self) -> TurnWords {
        TurnWords {
            session_id: self.identity.0,
            turn_order: self.identity.1,
            text: joined(&self.words),
            words: self.words,
        }
    }
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
    /// A partial turn of session `session_id`, whose audio began at `base_ms` on the
    /// track's clock, or its unformatted end (`end_of_turn`) when the formatted one is what
    /// the bridge stores. Its final words (they come first: a word is final before the next
    /// one is) replace the ones kept from its last partial. Returns where the last of them
    /// ends: the audio before it need not be held for replay.
    pub fn partial(
        &mut self,
        session_id: &str,
        turn_order: u64,
        mut words: Vec<Word>,
        base_ms: u64,
        end_of_turn: bool,
    ) -> Option<u64> {
        let finals = words.iter().take_while(|w| w.word_is_final).count();
        words.truncate(finals);
        let words = words.into_iter().map(|w| on_track_clock(w, base_ms));
        if !end_of_turn {
            self.current_order = turn_order;
            self.current.clear();
            self.current.extend(words);
            return self.current.last().map(|w| w.end);
        }
        // The turn ended; the carried words are its start.
        let same = self
            .awaiting
            .iter()
            .position(|a| a.turn_order == turn_order);
        let (prefix, identity) = match same.and_then(|i| self.awaiting.remove(i)) {
            // The same end again: keep what was carried before it.
            Some(mut same) => {
                let identity = std::mem::take(&mut same.identity);
                (same.into_carried(), identity)
            }
            None => {
                let from = self.carried_from.take();
                let identity = from.unwrap_or_else(|| (session_id.to_owned(), turn_order));
                (std::mem::take(&mut self.carried), identity)
            }
        };
        if self.current_order == turn_order {
            self.current.clear();
        }
        let carried = prefix.len();
        let mut all = prefix;
        all.extend(words);
        let end = all.last().map(|w| w.end);
        let at = self.awaiting.partition_point(|a| a.turn_order < turn_order);
        self.awaiting.insert(
            at,
            Awaiting {
                identity,
                turn_order,
                carried,
                words: all,
            },
        );
        end
    }

    /// The current session dropped (or was given up): a turn it ended but never sent
    /// formatted is whole (`take_ended`), and the final words of its open turn wait for
    /// the next session's final turn.
    pub fn session_dropped(&mut self, session_id: &str) {
        self.ended
            .extend(self.awaiting.drain(..).map(Awaiting::into_turn));
        if self.current.is_empty() {
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

    /// Words are carried from a dropped session.
    pub fn carries_words(&self) -> bool {
        !self.carried.is_empty()
    }

    /// The next session's first word starts at `start_ms` on the track's clock: if that is
    /// [`PAUSE_ENDS_TURN_MS`] or more after the carried words, the drop fell in the pause
    /// that ended their turn, and they are a turn of their own.
    pub fn split_if_paused(&mut self, start_ms: u64) -> Option<TurnWords> {
        let last_end = self.carried.last()?.end;
        if start_ms < last_end + PAUSE_ENDS_TURN_MS {
            return None;
        }
        self.flush_carried()
    }

    /// The session after a drop heard what was replayed and reported no words: the
    /// carried words were the whole turn (it ended in the pause the drop fell in).
    pub fn flush_carried(&mut self) -> Option<TurnWords> {
        let (session_id, turn_order) = self.carried_from.take()?;
        let words = std::mem::take(&mut self.carried);
        Some(TurnWords {
            session_id,
            turn_order,
            text: joined(&words),
            words,
        })
    }

    /// Final turn `turn_order` of the current session, with its words already on the
    /// track's clock: the words carried into it go before them, and before its transcript
    /// their text (a formatted transcript covers only the current session's part).
    pub fn finish(
        &mut self,
        turn_order: u64,
        words: Vec<Word>,
        transcript: String,
    ) -> (Vec<Word>, String) {
        if self.current_order == turn_order {
            self.current.clear();
        }
        // Earlier turns whose formatted versions never came are stored first; later ones
        // still wait for theirs.
        while self
            .awaiting
            .front()
            .is_some_and(|a| a.turn_order < turn_order)
        {
            self.ended
                .extend(self.awaiting.pop_front().map(Awaiting::into_turn));
        }
        let same = self
            .awaiting
            .front()
            .is_some_and(|a| a.turn_order == turn_order);
        let prefix = match same.then(|| self.awaiting.pop_front()).flatten() {
            Some(same) => same.into_carried(),
            None => {
                self.carried_from = None;
                std::mem::take(&mut self.carried)
            }
        };
        if prefix.is_empty() {
            return (words, transcript);
        }
        let mut text = joined(&prefix);
        if !transcript.trim().is_empty() {
            text.push(' ');
            text.push_str(&transcript);
        }
        let mut all = prefix;
        all.extend(words);
        (all, text)
    }

    /// The track's clock moved by `delta_ms` (its origin settled): so do the words kept.
    pub fn shift(&mut self, delta_ms: i64) {
        let awaiting = self.awaiting.iter_mut().flat_map(|a| a.words.iter_mut());

        let ended = self.ended.iter_mut().flat_map(|t| t.words.iter_mut());
        for word in self
            .current
            .iter_mut()
            .chain(self.carried.iter_mut())
            .chain(awaiting)
            .chain(ended)
        {
            word.start = word.start.saturating_add_signed(delta_ms);
            word.end = word.end.saturating_add_signed(delta_ms);
        }
    }

    /// Whole turns no formatted version will come for, oldest first: to be stored before
    /// anything the track says next.
    pub fn take_ended(&mut self) -> Vec<TurnWords> {
        std::mem::take(&mut self.ended)
    }

    /// The track is finished: final words no final turn took (whole turns never sent
    /// formatted, then what was carried or still open when the session ended), each a turn
    /// of its own, in order.
    pub fn leftovers(&mut self, session_id: &str) -> Vec<TurnWords> {
        self.session_dropped(session_id);
        let mut turns = self.take_ended();
        turns.extend(self.flush_carried());
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

    fn ids(turn: &TurnWords) -> (&str, u64, &str) {
        (
            turn.session_id.as_str(),
            turn.turn_order,
            turn.text.as_str(),
        )
    }

    #[test]
    fn a_partial_keeps_its_final_words_on_the_tracks_clock() {
        let mut open = OpenTurn::default();
        let words = vec![
            word("one", 0, 300, true),
            word("two", 300, 600, true),
            word("three", 600, 900, false),
        ];
        assert_eq!(open.partial("s1", 0, words, 1000, false), Some(1600));
        let later = vec![word("one", 0, 300, false)];
        assert_eq!(open.partial("s1", 0, later, 1000, false), None);
        assert!(
            open.current.is_empty(),
            "a later partial replaces the earlier"
        );
        assert_eq!(open.leftovers("s1"), vec![], "nothing final, nothing left");
    }

    #[test]
    fn words_of_a_dropped_session_go_before_the_next_final_turn() {
        let mut open = OpenTurn::default();
        let words = vec![word("hello", 0, 300, true), word("there", 300, 500, false)];
        open.partial("s1", 3, words, 1000, false);
        open.session_dropped("s1");
        assert_eq!(open.carried_text().as_deref(), Some("hello"));
        // The new session's audio begins where the held audio began.
        let next = vec![on_track_clock(word("world", 0, 400, true), 1300)];
        let (words, text) = open.finish(0, next, "World.".to_owned());
        assert_eq!(text, "hello World.");
        assert_eq!(
            texts(&words),
            vec![("hello", 1000, 1300), ("world", 1300, 1700)]
        );
        assert_eq!(open.carried_text(), None);
        assert_eq!(open.leftovers("s2"), vec![], "taken by the final turn");
    }

    #[test]
    fn carried_words_the_next_session_adds_nothing_to_are_a_turn_of_their_own() {
        let mut open = OpenTurn::default();
        open.partial("s1", 2, vec![word("yes", 0, 200, true)], 0, false);
        open.session_dropped("s1");
        let turn = open.flush_carried().expect("the carried words");
        assert_eq!(ids(&turn), ("s1", 2, "yes"));
        assert_eq!(open.flush_carried(), None, "once");
        assert_eq!(
            open.carried_text(),
            None,
            "nothing goes before the next turn"
        );
    }

    #[test]
    fn words_no_final_turn_took_are_left_over_under_their_first_sessions_identity() {
        let mut open = OpenTurn::default();
        let (a, b) = (word("a", 0, 100, true), word("b", 100, 200, false));
        open.partial("s1", 3, vec![a, b], 0, false);
        open.session_dropped("s1");
        // The second session drops too, mid-turn, after more final words.
        open.partial("s2", 0, vec![word("c", 0, 100, true)], 500, false);
        open.session_dropped("s2");
        open.partial("s3", 0, vec![word("d", 0, 100, true)], 900, false);
        let left = open.leftovers("s3");
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(ids(&left[0]), ("s1", 3, "a c d"));
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
        assert_eq!(open.partial("s1", 4, ended, 1000, true), Some(1200));
        open.session_dropped("s1");
        assert_eq!(open.carried_text(), None, "not the start of the next turn");
        let stored_first = open.take_ended();
        assert_eq!(stored_first.len(), 1);
        assert_eq!(ids(&stored_first[0]), ("s1", 4, "all done"));
        // The next session's turn is its own.
        let next = vec![on_track_clock(word("next", 0, 100, true), 1200)];
        let (words, text) = open.finish(0, next, "Next.".to_owned());
        assert_eq!((words.len(), text.as_str()), (1, "Next."));
        assert_eq!(open.leftovers("s2"), vec![]);
    }

    #[test]
    fn an_ended_turn_takes_the_words_carried_into_it_in_order() {
        let mut open = OpenTurn::default();
        open.partial("s1", 5, vec![word("a", 0, 100, true)], 0, false);
        open.session_dropped("s1");
        // The next session ends the turn unformatted, then drops before the formatted one.
        let rest = vec![word("b", 0, 100, true), word("c", 100, 200, true)];
        open.partial("s2", 0, rest, 300, true);
        assert_eq!(
            open.carried_text(),
            None,
            "the carried words are in the ended turn"
        );
        open.session_dropped("s2");
        let ended = open.take_ended();
        assert_eq!(ended.len(), 1);
        assert_eq!(ids(&ended[0]), ("s1", 5, "a b c"));
        assert_eq!(open.leftovers("s3"), vec![]);
    }

    #[test]
    fn a_formatted_end_takes_the_carried_words_even_after_the_next_turn_began() {
        let mut open = OpenTurn::default();
        open.partial("s1", 1, vec![word("x", 0, 100, true)], 0, false);
        open.session_dropped("s1");
        let rest = vec![word("y", 0, 100, true)];
        open.partial("s2", 0, rest, 200, true);
        // The next turn's first partial comes before turn 0's formatted version.
        open.partial("s2", 1, vec![word("z", 400, 500, true)], 200, false);
        let formatted = vec![on_track_clock(word("Y.", 0, 100, true), 200)];
        let (words, text) = open.finish(0, formatted, "Y.".to_owned());
        assert_eq!(text, "x Y.");
        assert_eq!(texts(&words), vec![("x", 0, 100), ("Y.", 200, 300)]);
        // Turn 1's final words are still held for a drop.
        open.session_dropped("s2");
        assert_eq!(open.carried_text().as_deref(), Some("z"));
    }

    #[test]
    fn an_end_whose_formatted_version_never_came_is_stored_before_the_next_turn() {
        let mut open = OpenTurn::default();
        open.partial("s1", 0, vec![word("first", 0, 100, true)], 0, true);
        let (words, text) = open.finish(1, Vec::new(), "Second.".to_owned());
        assert_eq!((words.len(), text.as_str()), (0, "Second."));
        let ended = open.take_ended();
        assert_eq!(ended.len(), 1);
        assert_eq!(ids(&ended[0]), ("s1", 0, "first"));
    }

    #[test]
    fn carried_words_a_turn_ending_pause_follows_are_kept_apart() {
        let mut open = OpenTurn::default();
        open.partial("s1", 2, vec![word("done", 0, 200, true)], 1000, false);
        open.session_dropped("s1");
        // The next session's first word starts less than a turn-ending pause later.
        assert_eq!(open.split_if_paused(1200 + PAUSE_ENDS_TURN_MS - 1), None);
        assert!(open.carries_words());
        // Or at least that much later: a turn of its own.
        let alone = open.split_if_paused(1200 + PAUSE_ENDS_TURN_MS);
        assert_eq!(alone.as_ref().map(ids), Some(("s1", 2, "done")));
        assert!(!open.carries_words());
        let (words, text) = open.finish(0, Vec::new(), "Next.".to_owned());
        assert_eq!((words.len(), text.as_str()), (0, "Next."));
    }

    #[test]
    fn a_later_turns_end_before_an_earlier_formatted_end_waits_its_turn() {
        let mut open = OpenTurn::default();
        open.partial("s1", 0, vec![word("one", 0, 100, true)], 0, true);
        open.partial("s1", 1, vec![word("two", 200, 300, true)], 0, true);
        let (_, text) = open.finish(0, Vec::new(), "One.".to_owned());
        assert_eq!(text, "One.");
        assert!(
            open.take_ended().is_empty(),
            "turn 1 still waits for its formatted end"
        );
        let (_, text) = open.finish(1, Vec::new(), "Two.".to_owned());
        assert_eq!(text, "Two.");
        assert!(open.take_ended().is_empty(), "each stored once, formatted");
    }

    #[test]
    fn every_kept_word_moves_with_the_tracks_clock() {
        let mut open = OpenTurn::default();
        open.partial("s1", 0, vec![word("a", 0, 100, true)], 0, true);
        open.session_dropped("s1"); // "a" is an ended turn now
        open.partial("s2", 0, vec![word("b", 0, 100, true)], 200, false);
        open.session_dropped("s2"); // "b" is carried
        open.partial("s3", 0, vec![word("c", 0, 100, true)], 400, false);
        open.shift(1000);
        let left = open.leftovers("s3");
        let all: Vec<_> = left.iter().flat_map(|t| texts(&t.words)).collect();
        assert_eq!(
            all,
            vec![("a", 1000, 1100), ("b", 1200, 1300), ("c", 1400, 1500)]
        );
    }

    #[test]
    fn a_drop_with_no_final_words_carries_nothing() {
        let mut open = OpenTurn::default();
        open.partial("s1", 0, vec![word("x", 0, 100, false)], 0, false);
        open.session_dropped("s1");
        assert_eq!(open.carried_text(), None);
        let (words, text) = open.finish(0, Vec::new(), String::new());
        assert!(words.is_empty() && text.is_empty());
        assert!(open.take_ended().is_empty());
        assert_eq!(open.flush_carried(), None);
    }
}
