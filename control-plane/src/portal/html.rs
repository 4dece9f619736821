//! HTML out: escaping and the page frame. Every value a user or the network wrote goes into a
//! page through [`E`] (element text and quoted attribute values alike); the templates are
//! string literals in the page functions, so nothing else reaches the page unescaped.

use std::fmt::{self, Display, Write};

/// Escapes `&`, `<`, `>`, `"` and `'` when displayed.
pub struct E<'a>(pub &'a str);

impl Display for E<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// Percent-encodes a path segment or query value (what is not unreserved).
pub struct U<'a>(pub &'a str);

impl Display for U<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                f.write_char(b as char)?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

/// Who is looking, for the navigation.
pub struct Viewer<'a> {
    pub label: &'a str,
    pub role: &'a str,
    pub tenant: Option<&'a str>,
    pub csrf: &'a str,
    /// Whether the approval queue and audit log are theirs to see.
    pub admin: bool,
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}\
header a{color:#cfe0ff;text-decoration:none}header .who{margin-left:auto;font-size:.9em}\
main{max-width:68em;margin:1.2em auto;padding:0 1.2em}\
table{border-collapse:collapse;width:100%;background:#fff}td,th{border-bottom:1px solid #e3e6ea;padding:.4em .6em;text-align:left;vertical-align:top}\
.badge{display:inline-block;padding:0 .5em;border-radius:.7em;font-size:.8em;background:#e3e6ea}\
.published{background:#d6f5dd}.deprecated{background:#ffe9c7}.draft{background:#e3e6ea}.retired{background:#f7d4d4}\
.box{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:1em;margin:1em 0}\
.once{font-family:monospace;font-size:1.1em;background:#fffbe0;padding:.5em;border:1px dashed #c9a400}\
.error{background:#fde8e8;border-color:#e8a0a0}form.inline{display:inline}\
pre{background:#f0f2f5;padding:.6em;overflow:auto}.note{color:#667;font-size:.9em}svg.chart{display:block;max-width:100%;height:auto}code{font-size:.95em}\
input,select,textarea,button{font:inherit}";

/// A whole page: the frame, the navigation for `viewer` (none on the login page) and `body`.
pub fn page(title: &str, viewer: Option<&Viewer<'_>>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} · Tollgate portal</title><style>{STYLE}</style></head><body><header>\
         <strong>Tollgate</strong>",
        E(title)
    );
    if let Some(v) = viewer {
        out.push_str(
            "<a href=\"/portal\">Catalog</a><a href=\"/portal/apps\">Apps and keys</a><a href=\"/portal/usage\">Usage</a>",
        );
        if v.admin {
            out.push_str(
                "<a href=\"/portal/approvals\">Approvals</a><a href=\"/portal/audit\">Audit log</a>",
            );
        }
        let _ = write!(
            out,
            "<span class=\"who\">{} · {}{}</span>\
             <form class=\"inline\" method=\"post\" action=\"/portal/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Log out</button></form>",
            E(v.label),
            E(v.role),
            v.tenant.map(|t| format!(" of {}", E(t))).unwrap_or_default(),
            E(v.csrf)
        );
    }
    let _ = write!(
        out,
        "</header><main><h1>{}</h1>{body}</main></body></html>",
        E(title)
    );
    out
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", E(csrf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_open_markup_or_leave_an_attribute() {
        assert_eq!(
            E("<script>alert('x')</script> & \"q\"").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(E("plain").to_string(), "plain");
        assert_eq!(U("a b/c?d").to_string(), "a%20b%2Fc%3Fd");
        let p = page("<b>", None, "");
        assert!(p.contains("<title>&lt;b&gt; · Tollgate portal</title>"), "{p}");
    }
}
