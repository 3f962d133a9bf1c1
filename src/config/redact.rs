//! `Debug` views of settings that may be credentials (a Slack webhook URL, an
//! `Authorization` header), so that printing a component's settings with `{:?}` never
//! shows one.

use std::fmt;

/// What a hidden value is shown as.
pub(crate) const HIDDEN: &str = "<redacted>";

/// A URL shown as its scheme, host and port only: a Slack webhook's path is its secret,
/// and any URL may carry `user:password@` or a key in its query.
pub(crate) struct UrlOrigin<'a>(pub &'a str);

impl fmt::Debug for UrlOrigin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.parse::<hyper::Uri>() {
            Ok(u) => match (u.scheme_str(), u.host()) {
                (Some(scheme), Some(host)) => {
                    let port = u.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
                    write!(f, "\"{scheme}://{host}{port}/{HIDDEN}\"")
                }
                _ => write!(f, "\"{HIDDEN}\""),
            },
            Err(_) => write!(f, "\"{HIDDEN}\""),
        }
    }
}

/// Header names with their values hidden.
pub(crate) struct HeaderNames<'a>(pub &'a [(String, String)]);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| (name, HIDDEN)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_show_their_origin_and_headers_their_names_only() {
        let url = format!(
            "{:?}",
            UrlOrigin("https://u:pw@hooks.slack.com:8443/services/T0/B0/s3cr3t?k=s3cr3t")
        );
        assert_eq!(url, "\"https://hooks.slack.com:8443/<redacted>\"");
        assert_eq!(
            format!("{:?}", UrlOrigin("not a url s3cr3t")),
            "\"<redacted>\""
        );
        let headers = vec![("Authorization".to_string(), "Bearer s3cr3t".to_string())];
        let shown = format!("{:?}", HeaderNames(&headers));
        assert!(
            shown.contains("Authorization") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }
}
