//! `compression = "none" | "gzip" | "zstd"`: the one definition every component uses (the
//! `s3`, `http` outputs and the forward test client), so that a name, a file extension or
//! a `Content-Encoding` is written in one place.

use super::reader::{Diagnostics, Table};

/// How a payload is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Sent as it is.
    #[default]
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// Zstandard (RFC 8878).
    Zstd,
}

impl Compression {
    /// Every value, in the order messages list them.
    pub(crate) const ALL: [Compression; 3] =
        [Compression::None, Compression::Gzip, Compression::Zstd];

    /// The config value (`"none"`, `"gzip"`, `"zstd"`), also the name Fluent forward's
    /// `compressed` option and HTTP's `Content-Encoding` use for the compressed ones.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The value named `s` in the config.
    pub(crate) fn parse(s: &str) -> Option<Compression> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The file-name extension of an object compressed so (`""`, `".gz"`, `".zst"`).
    pub(crate) fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// The `Content-Encoding` of a body compressed so (RFC 9110 §8.4.1), also the value of
    /// Fluent forward's `compressed` option (CompressedPackedForward); `None` when not
    /// compressed.
    pub(crate) fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            c => Some(c.as_str()),
        }
    }

    /// Reads `compression` from `t`, accepting only `allowed` (what the component can
    /// send); absent = [`Compression::None`]. A refused value is an error at its place.
    pub(crate) fn read(
        t: &mut Table<'_, '_>,
        d: &mut Diagnostics,
        allowed: &[Compression],
    ) -> Self {
        let Some(s) = t.opt_string(d, "compression") else {
            return Compression::None;
        };
        match Compression::parse(&s).filter(|c| allowed.contains(c)) {
            Some(c) => c,
            None => {
                let names: Vec<&str> = allowed.iter().map(|c| c.as_str()).collect();
                let expected = match names.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => names.join(""),
                };
                d.error(
                    t.value_span("compression"),
                    format!("{}.compression: expected {expected}, found {s:?}", t.path()),
                );
                Compression::None
            }
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
