//! String operators that need more than `==`: case-insensitive comparison and wildcards.
//!
//! Case folding lowercases each character on both sides (operands are lowered once, at
//! compile time). Comparison walks character iterators so matching never allocates.

/// Lowercases an operand once, character by character, as the matcher does for events.
pub(crate) fn fold(s: &str) -> Box<str> {
    s.chars()
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .into()
}

fn folded(s: &str) -> impl DoubleEndedIterator<Item = char> + '_ {
    s.chars().flat_map(char::to_lowercase)
}

/// `value` equals `lowered` ignoring case; `lowered` was produced by [`fold`].
pub(crate) fn eq_ignore_case(value: &str, lowered: &str) -> bool {
    if value.is_ascii() && lowered.is_ascii() {
        return value.eq_ignore_ascii_case(lowered);
    }
    folded(value).eq(lowered.chars())
}

pub(crate) fn prefix_ignore_case(value: &str, lowered: &str) -> bool {
    if value.is_ascii() && lowered.is_ascii() {
        return value.len() >= lowered.len()
            && value.as_bytes()[..lowered.len()].eq_ignore_ascii_case(lowered.as_bytes());
    }
    let mut it = folded(value);
    lowered.chars().all(|c| it.next() == Some(c))
}

pub(crate) fn suffix_ignore_case(value: &str, lowered: &str) -> bool {
    if value.is_ascii() && lowered.is_ascii() {
        return value.len() >= lowered.len()
            && value.as_bytes()[value.len() - lowered.len()..]
                .eq_ignore_ascii_case(lowered.as_bytes());
    }
    let mut it = value.chars().rev().flat_map(|c| c.to_lowercase().rev());
    lowered.chars().rev().all(|c| it.next() == Some(c))
}

/// A compiled `wildcard` operand: literal pieces between unescaped `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wildcard {
    /// Always at least one piece; `n` pieces mean `n - 1` stars.
    pieces: Vec<Box<str>>,
}

impl Wildcard {
    /// Parses the operand. `\*` is a literal star and `\\` a literal backslash; any other
    /// escape, a trailing backslash or two unescaped stars in a row are errors.
    pub(crate) fn parse(text: &str) -> Result<Wildcard, String> {
        let mut pieces = Vec::new();
        let mut cur = String::new();
        let mut chars = text.chars();
        let mut last_was_star = false;
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if last_was_star {
                        return Err(format!(
                            "wildcard {text:?} has consecutive \"*\" characters"
                        ));
                    }
                    pieces.push(std::mem::take(&mut cur).into_boxed_str());
                    last_was_star = true;
                    continue;
                }
                '\\' => match chars.next() {
                    Some(e @ ('*' | '\\')) => cur.push(e),
                    Some(_) => {
                        return Err(format!(
                            "wildcard {text:?}: a backslash may only escape \"*\" or \"\\\""
                        ));
                    }
                    None => {
                        return Err(format!("wildcard {text:?} ends with a lone backslash"));
                    }
                },
                other => cur.push(other),
            }
            last_was_star = false;
        }
        pieces.push(cur.into_boxed_str());
        Ok(Wildcard { pieces })
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(x) => x,
            None => return false,
        };
        let Some((last, middle)) = rest.split_last() else {
            return value == &**first;
        };
        if value.len() < first.len() + last.len()
            || !value.starts_with(&**first)
            || !value.ends_with(&**last)
        {
            return false;
        }
        // Leftmost placement of each middle piece leaves the most room for the rest, so a
        // greedy scan is exact for patterns whose only metacharacter is `*`.
        let mut window = &value[first.len()..value.len() - last.len()];
        for piece in middle {
            match window.find(&**piece) {
                Some(i) => window = &window[i + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_case() {
        assert!(eq_ignore_case("ÉTÉ", &fold("été")));
        assert!(eq_ignore_case("ȺBC", &fold("ⱥbc")));
        assert!(eq_ignore_case("ⱥbc", &fold("ȺBC")));
        assert!(!eq_ignore_case("ab", &fold("abc")));
        assert!(prefix_ignore_case("EventBridge", &fold("eventb")));
        assert!(prefix_ignore_case("ȺBCdef", &fold("ⱥb")));
        assert!(!prefix_ignore_case("Ev", &fold("eventb")));
        assert!(suffix_ignore_case("PHOTO.PNG", &fold(".png")));
        assert!(suffix_ignore_case("xxȺ", &fold("xⱥ")));
        assert!(suffix_ignore_case("", ""));
        assert!(!suffix_ignore_case("g", &fold(".png")));
    }

    #[test]
    fn wildcards() {
        let w = |p: &str| Wildcard::parse(p).unwrap();
        assert!(w("*.png").matches("photo.png"));
        assert!(!w("*.png").matches("photo.PNG"));
        assert!(w("a*b*c").matches("aXbYc"));
        assert!(!w("a*b*c").matches("acb"));
        assert!(w("*").matches(""));
        assert!(w("").matches(""));
        assert!(!w("").matches("a"));
        assert!(w("a*a").matches("aa"));
        assert!(!w("a*a").matches("a"));
        assert!(w("x*\\**").matches("xyz*"));
        assert!(w("x*\\**").matches("x*"));
        assert!(!w("x*\\**").matches("xyz"));
        assert!(w("a\\\\b").matches("a\\b"));
        assert!(w("*ab*ab*").matches("abab"));
        assert!(!w("*ab*ab*").matches("aba"));
        for bad in ["a**b", "a\\b", "a\\", "**"] {
            assert!(Wildcard::parse(bad).is_err(), "{bad}");
        }
    }
}
