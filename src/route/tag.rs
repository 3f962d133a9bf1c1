//! Tag globs for `routes.NAME.tag`.
//!
//! `*` matches any run of characters, including `.` and none at all, as in Fluent Bit's
//! `Match` rules (FireLens tags are `<container>-firelens-<task id>`, so `web-firelens-*` is
//! the usual form). `**` is accepted and means the same, so fluentd habits (`app.**`) work.
//! Everything else matches itself, case-sensitively.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagGlob {
    text: String,
    /// Literal pieces between stars; `anchored_start/end` say whether the glob begins/ends
    /// with a literal (no star).
    pieces: Vec<String>,
    anchored_start: bool,
    anchored_end: bool,
}

impl TagGlob {
    pub(crate) fn new(text: &str) -> Result<TagGlob, String> {
        if text.is_empty() {
            return Err("empty tag glob (use \"*\" to match every tag)".into());
        }
        let pieces: Vec<String> = text
            .split('*')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        Ok(TagGlob {
            text: text.to_string(),
            pieces,
            anchored_start: !text.starts_with('*'),
            anchored_end: !text.ends_with('*'),
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn matches(&self, tag: &str) -> bool {
        if !self.text.contains('*') {
            return tag == self.text;
        }
        let mut rest = tag;
        let n = self.pieces.len();
        for (i, piece) in self.pieces.iter().enumerate() {
            let first = i == 0;
            let last = i + 1 == n;
            if first && self.anchored_start {
                match rest.strip_prefix(piece.as_str()) {
                    Some(r) => rest = r,
                    None => return false,
                }
                if last && self.anchored_end {
                    return rest.is_empty();
                }
                continue;
            }
            if last && self.anchored_end {
                return rest.ends_with(piece.as_str());
            }
            match rest.find(piece.as_str()) {
                Some(pos) => rest = &rest[pos + piece.len()..],
                None => return false,
            }
        }
        !self.anchored_end || rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(g: &str, t: &str) -> bool {
        TagGlob::new(g).unwrap().matches(t)
    }

    #[test]
    fn literal_and_star() {
        assert!(m("app", "app"));
        assert!(!m("app", "app2"));
        assert!(m("*", ""));
        assert!(m("*", "anything.at.all"));
        assert!(m("web-firelens-*", "web-firelens-3de392df"));
        assert!(!m("web-firelens-*", "api-firelens-3de392df"));
        assert!(m("*-firelens-*", "web-firelens-3de392df"));
        assert!(!m("*-firelens-*", "firelens-healthcheck"));
        assert!(m("app.**", "app.web.access"));
        assert!(m("app.*", "app.web.access"));
        assert!(!m("app.*", "apps.web"));
        assert!(m("*.access", "app.web.access"));
        assert!(!m("*.access", "app.web.access.log"));
        assert!(m("a*b*c", "aXbYc"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("a*a", "aa"));
        assert!(!m("a*a", "a"));
        assert!(m("ab*ab", "abab"));
        assert!(!m("ab*ab", "aba"));
    }

    #[test]
    fn empty_is_rejected() {
        assert!(TagGlob::new("").is_err());
    }
}
