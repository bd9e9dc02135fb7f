//! Fetch Metadata (W3C): browsers say where a request comes from. The
//! sidecar serves programs in its own container, never web pages, so any
//! request a browser marks as coming from another site (`Sec-Fetch-Site`
//! other than `same-origin` / `none`) or as a navigation or an opaque
//! `no-cors` load (`<img>`, `<script>`, a form post) is refused — on every
//! route, whatever it carries. Programs send no such header, or (Node's
//! `fetch`) `Sec-Fetch-Mode: cors`, which passes.

use axum::http::{HeaderMap, HeaderName};

const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");

/// `Err(why)` when the request is a browser's cross-site request, navigation
/// or `no-cors` load.
pub(crate) fn check(headers: &HeaderMap) -> Result<(), &'static str> {
    for site in headers.get_all(SEC_FETCH_SITE) {
        let allowed = site.to_str().is_ok_and(|s| {
            let s = s.trim();
            s.eq_ignore_ascii_case("same-origin") || s.eq_ignore_ascii_case("none")
        });
        if !allowed {
            return Err("requests a browser sends for another site (Sec-Fetch-Site) are refused");
        }
    }
    for mode in headers.get_all(SEC_FETCH_MODE) {
        let refused = mode.to_str().map_or(true, |m| {
            let m = m.trim();
            m.eq_ignore_ascii_case("navigate") || m.eq_ignore_ascii_case("no-cors")
        });
        if refused {
            return Err("browser navigations and no-cors loads (Sec-Fetch-Mode) are refused");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn programs_pass_and_cross_site_navigations_and_no_cors_loads_do_not() {
        for ok in [
            &[][..],
            &[("sec-fetch-mode", "cors")],
            &[("sec-fetch-site", "none"), ("sec-fetch-mode", "cors")],
            &[
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-mode", "same-origin"),
            ],
            &[("sec-fetch-site", "Same-Origin")],
        ] {
            assert!(check(&headers(ok)).is_ok(), "{ok:?}");
        }
        for bad in [
            &[
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "no-cors"),
            ][..],
            &[("sec-fetch-site", "same-site")],
            &[("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "cors")],
            &[("sec-fetch-site", "none"), ("sec-fetch-mode", "navigate")],
            &[("sec-fetch-mode", "no-cors")],
            &[("sec-fetch-mode", "NAVIGATE")],
            &[("sec-fetch-site", "none"), ("sec-fetch-site", "cross-site")],
            &[("sec-fetch-site", "")],
        ] {
            assert!(check(&headers(bad)).is_err(), "{bad:?}");
        }
    }
}
