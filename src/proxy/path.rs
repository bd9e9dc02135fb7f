//! Keeping a proxied path under the upstream's base path (issue #11 item 7).

/// The path under `/api` as the upstream will understand it, or why it is
/// refused: it must not leave the upstream's base path.
///
/// Upstream servers (and the URL parser) resolve `.` and `..` segments,
/// including percent-encoded dots (`%2e%2e`, `.%2e`), and many treat a
/// backslash, raw or `%5c`, as a slash; Java servers ignore `;params` on a
/// segment. So this resolves exactly those first — backslashes become
/// slashes, dot segments are removed (RFC 3986 §5.2.4) — and refuses a `..`
/// that climbs above the base, and dot segments it cannot resolve safely
/// (hidden behind an encoded slash or carrying `;` parameters). `rest` is
/// empty or starts with `/`; so does the result.
pub fn confine_path(rest: &str) -> Result<String, &'static str> {
    if rest.is_empty() {
        return Ok(String::new());
    }
    if is_plain(rest) {
        return Ok(rest.to_owned());
    }
    resolve(rest)
}

/// [`confine_path`] the long way, for a non-empty `rest`.
fn resolve(rest: &str) -> Result<String, &'static str> {
    const LEAVES: &str = "the path leaves the upstream's base path";
    const HIDDEN: &str =
        "dot segments behind encoded slashes or with ;parameters are refused in proxied paths";
    let unified = replace_ignore_case(rest, "%5c", "/").replace('\\', "/");
    let segments: Vec<&str> = unified.split('/').skip(1).collect();
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    let mut ends_in_dot = false;
    for seg in &segments {
        let (bare, params) = match seg.split_once(';') {
            Some((bare, _)) => (bare, true),
            None => (*seg, false),
        };
        let dots = dot_segment(bare);
        if dots.is_some() && params {
            return Err(HIDDEN);
        }
        ends_in_dot = dots.is_some();
        match dots {
            Some(1) => {}
            Some(_) => {
                if kept.pop().is_none() {
                    return Err(LEAVES);
                }
            }
            None => {
                if replace_ignore_case(seg, "%2f", "/")
                    .split('/')
                    .any(|piece| dot_segment(piece.split(';').next().unwrap_or("")).is_some())
                {
                    return Err(HIDDEN);
                }
                kept.push(seg);
            }
        }
    }
    let mut out = String::with_capacity(rest.len());
    for seg in &kept {
        out.push('/');
        out.push_str(seg);
    }
    // `/a/b/..` is the directory `/a/`, and `/..`-free `/.` is `/`.
    if ends_in_dot || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// A path this function returns unchanged, known without resolving it: it
/// starts with `/`, holds no `%` (so no encoded dot, slash or backslash) and
/// no backslash, and no segment is `.` or `..` before its `;parameters`.
/// Most paths are plain; checking costs no allocation.
fn is_plain(rest: &str) -> bool {
    rest.starts_with('/')
        && !rest.contains(['%', '\\'])
        && rest.split('/').all(|seg| {
            let bare = seg.split(';').next().unwrap_or("");
            bare != "." && bare != ".."
        })
}

/// `Some(1)` for `.`, `Some(2)` for `..`, with dots raw or `%2e`; else `None`.
fn dot_segment(seg: &str) -> Option<u8> {
    match replace_ignore_case(seg, "%2e", ".").as_str() {
        "." => Some(1),
        ".." => Some(2),
        _ => None,
    }
}

/// `s` with every ASCII-case-insensitive occurrence of `from` (ASCII) replaced.
fn replace_ignore_case(s: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest
        .as_bytes()
        .windows(from.len())
        .position(|w| w.eq_ignore_ascii_case(from.as_bytes()))
    {
        out.push_str(&rest[..i]);
        out.push_str(to);
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_climb_out_of_the_base_are_refused_in_every_spelling() {
        for bad in [
            "/..",
            "/../admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/.%2e/admin",
            "/%2e./admin",
            "/..%5cadmin",
            "/..%5Cadmin",
            "/..\\admin",
            "/a/%2E%2E/%2e%2e/admin",
            "/a/b/../../../admin",
            "/a/../../admin",
            "/a%2f..%2f..%2fadmin",
            "/a%2F%2e%2e",
            "/..;/admin",
            "/a/..;x=1/b",
            "/a/.;/b",
        ] {
            assert!(confine_path(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// Whatever comes in, an accepted path holds no segment an upstream
        /// could read as `.` or `..`, in any spelling.
        #[test]
        fn an_accepted_path_has_no_dot_segment_left(
            segs in proptest::collection::vec(
                "(\\.|%2e|%2E|\\.\\.|%2e%2e|\\.%2E|a|b;c|%5c|\\\\|%2f|/)*", 0..8)
        ) {
            let path: String = segs.iter().map(|s| format!("/{s}")).collect();
            if let Ok(out) = confine_path(&path) {
                let out = replace_ignore_case(&out, "%2f", "/");
                for seg in out.split('/') {
                    let bare = seg.split(';').next().unwrap_or("");
                    proptest::prop_assert!(dot_segment(bare).is_none(), "{path} -> {out}");
                }
            }
        }
    }

    proptest::proptest! {
        /// The shortcut for plain paths changes no answer.
        #[test]
        fn plain_paths_resolve_to_themselves(
            segs in proptest::collection::vec("(\\.|\\.\\.|a|b;c|;|\\.;x|x\\.y|)*", 0..6)
        ) {
            let path: String = segs.iter().map(|s| format!("/{s}")).collect();
            if is_plain(&path) {
                proptest::prop_assert_eq!(resolve(&path), Ok(path));
            }
        }
    }

    #[test]
    fn paths_inside_the_base_are_resolved_as_the_upstream_would() {
        for (path, resolved) in [
            ("", ""),
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/a\\b", "/a/b"),
            ("/a%5Cb", "/a/b"),
            ("/a//b", "/a//b"),
            ("/a%20b/c%2Fd", "/a%20b/c%2Fd"),
            ("/a;v=1/b", "/a;v=1/b"),
            ("/...", "/..."),
            ("/..a", "/..a"),
        ] {
            assert_eq!(confine_path(path).as_deref(), Ok(resolved), "{path}");
        }
    }
}
