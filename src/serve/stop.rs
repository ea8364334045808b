//! Stop strings: generated text passes through a `StopMatcher`, which holds back the tail that
//! could still become a stop string and cuts the text where the first stop string begins (the
//! stop string itself is not returned, as OpenAI does).

/// Matches a request's stop strings across text deltas.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text not yet released (a suffix that is a prefix of some stop string).
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops,
            held: String::new(),
        }
    }

    /// Adds `delta`; returns the text safe to release and whether a stop string was found (then
    /// the text ends just before it, and the request is done).
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (delta.to_string(), false);
        }
        self.held.push_str(delta);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        let keep = self.partial_suffix();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// The text still held back (at the end of the request).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The length of the longest suffix of `held` that is a proper prefix of a stop string
    /// (cut at a character boundary).
    fn partial_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for len in (1..stop.len().min(self.held.len() + 1)).rev() {
                if len <= best {
                    break;
                }
                let start = self.held.len() - len;
                if self.held.is_char_boundary(start)
                    && stop.is_char_boundary(len)
                    && stop.starts_with(&self.held[start..])
                {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            let (t, hit) = m.push(d);
            out.push_str(&t);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_split_over_deltas_is_cut() {
        assert_eq!(
            run(&["END"], &["abc E", "N", "Dxyz"]),
            ("abc ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn near_misses_are_released() {
        assert_eq!(
            run(&["END"], &["abc E", "N", "d"]),
            ("abc ENd".into(), false)
        );
        assert_eq!(run(&["xyz"], &["é", "x"]), ("éx".into(), false));
    }

    #[test]
    fn earliest_stop_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), true));
    }

    #[test]
    fn held_text_waits_for_the_decision() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("go ST"), ("go ".into(), false));
        assert_eq!(m.push("ar"), ("STar".into(), false));
    }
}
