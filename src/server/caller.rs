//! Who may call the sidecar: the code in its own container, and nobody
//! else. A non-loopback peer is someone else on the network; a relayed
//! request (`Forwarded`, `X-Forwarded-For`) is on behalf of someone else; an
//! `Origin` header means a browser page — possibly hostile, via DNS
//! rebinding or CSRF — is making the call. None may obtain a token or use
//! one through the proxy.

use std::net::SocketAddr;

use axum::http::{HeaderMap, HeaderName, header};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The caller policy (`server.allow_remote_peers`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallerPolicy {
    pub(crate) allow_remote_peers: bool,
}

impl CallerPolicy {
    /// `Err(why)` when the request does not come from a local workload.
    pub(crate) fn check(self, peer: SocketAddr, headers: &HeaderMap) -> Result<(), String> {
        if !self.allow_remote_peers {
            if !crate::serve::is_loopback_peer(peer.ip()) {
                return Err("tokens are issued to local workloads only".into());
            }
            // DNS rebinding: a page at evil.example whose name now resolves
            // to 127.0.0.1 reaches us from a loopback peer, but its Host
            // header still says evil.example. Only loopback names pass.
            if !headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(is_loopback_host)
            {
                return Err(
                    "the Host header must name a loopback address (127.0.0.1, localhost, [::1])"
                        .into(),
                );
            }
        }
        for h in [header::FORWARDED, X_FORWARDED_FOR] {
            if headers.contains_key(&h) {
                return Err(format!(
                    "proxied requests ({h} header) are refused: tokens are issued to local workloads only"
                ));
            }
        }
        if headers.contains_key(header::ORIGIN) {
            return Err("requests from browsers (Origin header) are refused".into());
        }
        Ok(())
    }
}

/// `Err(why)` unless the request carries [`crate::proxy::REQUEST_HEADER`]
/// with the value `1`. A page in a browser cannot add a custom header to a
/// cross-origin request without a CORS preflight (which the sidecar never
/// approves), and a server-side request forgery that only controls a URL
/// cannot add one at all — the reason cloud metadata servers require
/// `Metadata-Flavor`.
pub(crate) fn require_request_header(headers: &HeaderMap, route: &str) -> Result<(), String> {
    let mut values = headers.get_all(crate::proxy::REQUEST_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if v.as_bytes() == b"1" => Ok(()),
        _ => Err(format!(
            "requests to {route} must carry the header `X-Authproxy-Request: 1`"
        )),
    }
}

/// `127.0.0.1[:port]` (any 127/8), `localhost[:port]`, `[::1][:port]`.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => {
                return ip == "::1" && valid_port(port);
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Empty, or `:` followed by a port number.
fn valid_port(p: &str) -> bool {
    p.is_empty()
        || p.strip_prefix(':')
            .is_some_and(|n| n.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// Issue #11, item 11: bound to `[::]`, an IPv4 client on 127.0.0.1
    /// arrives as `::ffff:127.0.0.1`: a loopback peer.
    #[test]
    fn an_ipv4_mapped_loopback_peer_is_a_loopback_peer() {
        let policy = CallerPolicy {
            allow_remote_peers: false,
        };
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8200"));
        for peer in [
            "[::ffff:127.0.0.1]:5000",
            "[::ffff:127.9.9.9]:5000",
            "[::1]:5000",
        ] {
            assert_eq!(policy.check(peer.parse().unwrap(), &h), Ok(()), "{peer}");
        }
        for peer in [
            "[::ffff:192.0.2.7]:5000",
            "[::ffff:10.0.0.1]:5000",
            "[2001:db8::1]:5000",
        ] {
            assert!(policy.check(peer.parse().unwrap(), &h).is_err(), "{peer}");
        }
    }

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for ok in [
            "127.0.0.1:8200",
            "127.0.0.1",
            "127.1.2.3:80",
            "localhost:8200",
            "LOCALHOST",
            "[::1]:8200",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8200",
            "10.0.0.1:8200",
            "0.0.0.0:8200",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8200",
            "[::2]:8200",
            "[::1]x",
            "127.0.0.1:99999",
            "127.0.0.1:port",
            "",
            "[::1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
