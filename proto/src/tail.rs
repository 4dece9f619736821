//! Which call records a live tail (`tollgate logs tail`) wants: the edge offers a record to
//! the control plane only when some tail's filter matches it, and the control plane hands
//! each record to the tails it matches. Both ends match with this code.

use crate::v1::TailFilter;

/// What one record is, for matching.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub tenant: &'a str,
    pub service: &'a str,
    pub app: &'a str,
    pub status: u16,
}

/// Whether `status` (`5xx`, `4xx`, `404`, or empty for any) is a status filter.
pub fn valid_status(status: &str) -> bool {
    match status.as_bytes() {
        [] => true,
        [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => c.is_ascii_digit(),
        [a, b, c] => [a, b, c].iter().all(|d| d.is_ascii_digit()) && (b'1'..=b'5').contains(a),
        _ => false,
    }
}

/// Whether a record with `f` passes `filter` (an empty field matches anything).
pub fn matches(filter: &TailFilter, f: &Fields<'_>) -> bool {
    let is = |want: &str, have: &str| want.is_empty() || want == have;
    let status = match filter.status.as_bytes() {
        [] => true,
        [c, b'x' | b'X', b'x' | b'X'] => u16::from(c.wrapping_sub(b'0')) == f.status / 100,
        _ => filter.status.parse::<u16>().is_ok_and(|s| s == f.status),
    };
    is(&filter.tenant, f.tenant) && is(&filter.service, f.service) && is(&filter.app, f.app) && status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_by_field_and_status_class() {
        let rec = Fields {
            tenant: "acme",
            service: "orders",
            app: "shop",
            status: 503,
        };
        let f = |service: &str, status: &str| TailFilter {
            service: service.into(),
            status: status.into(),
            ..TailFilter::default()
        };
        assert!(matches(&f("", ""), &rec));
        assert!(matches(&f("orders", "5xx"), &rec));
        assert!(matches(&f("", "503"), &rec));
        assert!(!matches(&f("", "4xx"), &rec));
        assert!(!matches(&f("refunds", ""), &rec));
        assert!(!matches(&f("", "502"), &rec));
        for ok in ["", "5xx", "2XX", "404"] {
            assert!(valid_status(ok), "{ok}");
        }
        for bad in ["6xx", "5x", "abc", "0xx", "099", "1234"] {
            assert!(!valid_status(bad), "{bad}");
        }
    }
}
