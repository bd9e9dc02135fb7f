//! How deep a YAML text nests its flow collections (`[…]`, `{…}`), found
//! before the YAML parser runs.
//!
//! Why before: the scanner under serde_norway (libyaml) keeps one
//! "possible simple key" slot per open flow collection and revisits them
//! all for every token, so its time grows with depth × length — 80 KB of
//! `{a: {a: …` took seconds — and serde_norway's own limit (128 levels)
//! applies only once the whole document has been scanned. Block nesting
//! costs libyaml nothing comparable; its depth is checked on the parsed
//! value instead.
//!
//! This follows libyaml's tokenizer wherever it decides whether a bracket
//! is an indicator: quoted scalars, plain scalars (which end at `,[]{}`
//! only in flow context, and may continue on more-indented lines),
//! comments, anchors and tags, block scalars and the block indentation
//! that bounds them. It builds nothing and counts nothing else; where
//! libyaml would stop with an error it just carries on, which can only
//! find more brackets, never fewer.

/// `Err(line)` (1-based) at the first flow collection opened deeper than
/// `limit`; `Ok` if there is none.
pub(super) fn check(text: &str, limit: usize) -> Result<(), usize> {
    Scanner {
        b: text.as_bytes(),
        i: 0,
        line: 1,
        col: 0,
        flow: 0,
        limit,
        indents: Vec::new(),
        key_allowed: true,
        block_key: None,
    }
    .run()
}

struct Scanner<'t> {
    b: &'t [u8],
    i: usize,
    line: usize,
    /// Column in characters, as libyaml counts it.
    col: usize,
    /// Open flow collections.
    flow: usize,
    limit: usize,
    /// Columns of the open block collections (libyaml's indent stack).
    indents: Vec<usize>,
    /// Whether a simple key may start here (libyaml's `simple_key_allowed`).
    key_allowed: bool,
    /// Where the possible simple key of the block level starts: (line, column).
    block_key: Option<(usize, usize)>,
}

impl Scanner<'_> {
    fn run(mut self) -> Result<(), usize> {
        loop {
            self.skip_to_next_token();
            let Some(c) = self.peek(0) else {
                return Ok(());
            };
            self.unroll(self.col);
            if self.col == 0
                && (self.b[self.i..].starts_with(b"---") || self.b[self.i..].starts_with(b"..."))
                && self.blankz(3)
            {
                // A document marker closes every block collection.
                self.indents.clear();
                self.block_key = None;
                self.key_allowed = false;
                self.bump_n(3);
                continue;
            }
            if self.col == 0 && c == b'%' {
                // A directive: the rest of the line.
                while !self.breakz(0) {
                    self.bump();
                }
                continue;
            }
            match c {
                b'[' | b'{' => {
                    self.save_key();
                    self.flow += 1;
                    if self.flow > self.limit {
                        return Err(self.line);
                    }
                    self.bump();
                    self.key_allowed = true;
                }
                b']' | b'}' => {
                    self.flow = self.flow.saturating_sub(1);
                    self.bump();
                    self.key_allowed = false;
                }
                b',' => {
                    self.bump();
                    self.key_allowed = true;
                }
                b'-' if self.blankz(1) => {
                    self.roll(self.col);
                    self.remove_key();
                    self.bump();
                    self.key_allowed = true;
                }
                b'?' if self.flow > 0 || self.blankz(1) => {
                    self.roll(self.col);
                    self.remove_key();
                    self.bump();
                    self.key_allowed = self.flow == 0;
                }
                b':' if self.flow > 0 || self.blankz(1) => {
                    if self.flow == 0 {
                        // A key on this line opens (or continues) a mapping at its column.
                        let col = match self.block_key.take() {
                            Some((line, col)) if line == self.line && self.col - col <= 1024 => col,
                            _ => self.col,
                        };
                        self.roll(col);
                    }
                    self.bump();
                    self.key_allowed = self.flow == 0;
                }
                b'*' | b'&' => {
                    self.save_key();
                    self.bump();
                    while self
                        .peek(0)
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                    {
                        self.bump();
                    }
                    self.key_allowed = false;
                }
                b'!' => {
                    self.save_key();
                    self.tag();
                    self.key_allowed = false;
                }
                b'|' | b'>' if self.flow == 0 => {
                    self.remove_key();
                    self.block_scalar();
                    self.key_allowed = true;
                }
                b'\'' | b'"' => {
                    self.save_key();
                    self.quoted(c);
                    self.key_allowed = false;
                }
                _ if self.plain_may_start(c) => {
                    self.save_key();
                    self.plain();
                }
                // libyaml stops here with an error; carrying on can only
                // find more nesting.
                _ => self.bump(),
            }
        }
    }

    fn peek(&self, k: usize) -> Option<u8> {
        self.b.get(self.i + k).copied()
    }

    /// Length of the line break at `i + k`, 0 if none (libyaml's breaks:
    /// CR, LF, CRLF, NEL, LS, PS).
    fn break_len(&self, k: usize) -> usize {
        let rest = &self.b[(self.i + k).min(self.b.len())..];
        match rest {
            [b'\r', b'\n', ..] => 2,
            [b'\r' | b'\n', ..] => 1,
            [0xC2, 0x85, ..] => 2,
            [0xE2, 0x80, 0xA8 | 0xA9, ..] => 3,
            _ => 0,
        }
    }

    fn blank(&self, k: usize) -> bool {
        matches!(self.peek(k), Some(b' ' | b'\t'))
    }

    fn breakz(&self, k: usize) -> bool {
        self.peek(k).is_none() || self.break_len(k) > 0
    }

    fn blankz(&self, k: usize) -> bool {
        self.blank(k) || self.breakz(k)
    }

    /// Moves past one byte (never a line break); counts a character at
    /// each byte that starts one.
    fn bump(&mut self) {
        if let Some(c) = self.peek(0) {
            if c & 0xC0 != 0x80 {
                self.col += 1;
            }
            self.i += 1;
        }
    }

    fn bump_n(&mut self, n: usize) {
        for _ in 0..n {
            self.bump();
        }
    }

    /// Moves past the line break here.
    fn newline(&mut self) {
        self.i += self.break_len(0).max(1);
        self.line += 1;
        self.col = 0;
    }

    fn skip_to_next_token(&mut self) {
        loop {
            if self.col == 0 && self.b[self.i..].starts_with(b"\xEF\xBB\xBF") {
                self.bump_n(3);
            }
            while self.peek(0) == Some(b' ')
                || (self.peek(0) == Some(b'\t') && (self.flow > 0 || !self.key_allowed))
            {
                self.bump();
            }
            if self.peek(0) == Some(b'#') {
                while !self.breakz(0) {
                    self.bump();
                }
            }
            if self.break_len(0) == 0 {
                return;
            }
            self.newline();
            if self.flow == 0 {
                self.key_allowed = true;
            }
        }
    }

    /// libyaml's `parser->indent`: the innermost block collection's column.
    fn indent(&self) -> Option<usize> {
        self.indents.last().copied()
    }

    fn roll(&mut self, col: usize) {
        if self.flow == 0 && self.indent().is_none_or(|top| top < col) {
            self.indents.push(col);
        }
    }

    fn unroll(&mut self, col: usize) {
        if self.flow == 0 {
            while self.indent().is_some_and(|top| top > col) {
                self.indents.pop();
            }
        }
    }

    fn save_key(&mut self) {
        if self.flow == 0 && self.key_allowed {
            self.block_key = Some((self.line, self.col));
        }
    }

    fn remove_key(&mut self) {
        if self.flow == 0 {
            self.block_key = None;
        }
    }

    fn plain_may_start(&self, c: u8) -> bool {
        let indicator = b"-?:,[]{}#&*!|>'\"%@`".contains(&c) || self.blankz(0);
        !indicator
            || (c == b'-' && !self.blank(1))
            || (self.flow == 0 && (c == b'?' || c == b':') && !self.blankz(1))
    }

    fn plain(&mut self) {
        let indent = self.indent().map_or(0, |top| top + 1);
        let mut leading_blanks = false;
        loop {
            if self.col == 0
                && (self.b[self.i..].starts_with(b"---") || self.b[self.i..].starts_with(b"..."))
                && self.blankz(3)
            {
                break;
            }
            if self.peek(0) == Some(b'#') {
                break;
            }
            while let Some(c) = self.peek(0).filter(|_| !self.blankz(0)) {
                let ends_value = c == b':'
                    && (self.blankz(1)
                        || (self.flow > 0 && self.peek(1).is_some_and(|n| b",?[]{}".contains(&n))));
                if ends_value || (self.flow > 0 && b",[]{}".contains(&c)) {
                    break;
                }
                self.bump();
            }
            if !(self.blank(0) || self.break_len(0) > 0) {
                break;
            }
            while self.blank(0) || self.break_len(0) > 0 {
                if self.blank(0) {
                    self.bump();
                } else {
                    self.newline();
                    leading_blanks = true;
                }
            }
            if self.flow == 0 && self.col < indent {
                break;
            }
        }
        self.key_allowed = leading_blanks;
    }

    fn quoted(&mut self, quote: u8) {
        self.bump();
        loop {
            match self.peek(0) {
                None => return,
                Some(b'\'') if quote == b'\'' && self.peek(1) == Some(b'\'') => self.bump_n(2),
                Some(b'\\') if quote == b'"' => {
                    self.bump();
                    if self.break_len(0) > 0 {
                        self.newline();
                    } else {
                        self.bump();
                    }
                }
                Some(c) if c == quote => {
                    self.bump();
                    return;
                }
                Some(_) if self.break_len(0) > 0 => self.newline(),
                Some(_) => self.bump(),
            }
        }
    }

    fn tag(&mut self) {
        self.bump();
        if self.peek(0) == Some(b'<') {
            while !self.blankz(0) && self.peek(0) != Some(b'>') {
                self.bump();
            }
            self.bump();
            return;
        }
        while self.peek(0).is_some_and(|c| {
            c.is_ascii_alphanumeric() || b"-_;/?:@&=+$.%!~*'()".contains(&c) || c >= 0x80
        }) {
            self.bump();
        }
    }

    fn block_scalar(&mut self) {
        self.bump();
        let mut increment = 0;
        for _ in 0..2 {
            match self.peek(0) {
                Some(b'+' | b'-') => self.bump(),
                Some(d @ b'1'..=b'9') => {
                    increment = usize::from(d - b'0');
                    self.bump();
                }
                _ => {}
            }
        }
        while self.blank(0) {
            self.bump();
        }
        if self.peek(0) == Some(b'#') {
            while !self.breakz(0) {
                self.bump();
            }
        }
        if self.break_len(0) == 0 {
            return;
        }
        self.newline();
        let mut indent = match (increment, self.indent()) {
            (0, _) => 0,
            (n, Some(top)) => top + n,
            (n, None) => n,
        };
        self.block_scalar_breaks(&mut indent);
        while self.col == indent && self.peek(0).is_some() {
            while !self.breakz(0) {
                self.bump();
            }
            if self.peek(0).is_none() {
                return;
            }
            self.newline();
            self.block_scalar_breaks(&mut indent);
        }
    }

    /// Blank lines and indentation before a block scalar's next line; on
    /// the first call, finds the scalar's indentation.
    fn block_scalar_breaks(&mut self, indent: &mut usize) {
        let mut max_indent = 0;
        loop {
            while (*indent == 0 || self.col < *indent) && self.peek(0) == Some(b' ') {
                self.bump();
            }
            max_indent = max_indent.max(self.col);
            if self.break_len(0) == 0 {
                break;
            }
            self.newline();
        }
        if *indent == 0 {
            *indent = max_indent
                .max(self.indent().map_or(0, |top| top + 1))
                .max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The deepest flow nesting `check` finds.
    fn depth(text: &str) -> usize {
        (0..).find(|&limit| check(text, limit).is_ok()).unwrap()
    }

    /// Nesting of collections in a parsed value (flow documents only: there
    /// every collection is a flow collection).
    fn value_depth(v: &serde_norway::Value) -> usize {
        use serde_norway::Value;
        match v {
            Value::Sequence(s) => 1 + s.iter().map(value_depth).max().unwrap_or(0),
            Value::Mapping(m) => {
                1 + m
                    .iter()
                    .map(|(k, v)| value_depth(k).max(value_depth(v)))
                    .max()
                    .unwrap_or(0)
            }
            Value::Tagged(t) => value_depth(&t.value),
            _ => 0,
        }
    }

    #[test]
    fn brackets_inside_scalars_and_comments_are_not_nesting() {
        for (text, expected) in [
            ("a: [b, [c]]", 2),
            ("a: '[[[['", 0),
            ("a: \"{{{{\\\"[[\"", 0),
            ("a: [it's, 'x]]]' , [y]]", 2),
            ("a: [b, # ]]]]\n  [c]]", 2),
            ("a: x [[[[ y", 0),
            ("a: |\n  [[[[ '\n  \"\nb: [[x]]", 2),
            ("- >-\n   {{{{\n\n   }\n- {a: [b]}", 2),
            ("a: plain\n  it's [[[[\nb: [c]", 1),
            ("a: !t [[b]]", 2),
            ("a: !<x[y]> [b]", 1),
            ("a: &x [b]\nc: *x", 1),
            ("[a#b, [c]]", 2),
        ] {
            assert_eq!(depth(text), expected, "{text:?}");
        }
    }

    #[test]
    fn the_line_of_the_first_collection_too_deep_is_given() {
        assert_eq!(check("a: 1\nb: [[[\n]]]", 2), Err(2));
        assert_eq!(check("a: [[\n[x]]]", 2), Err(2));
        assert_eq!(check("a: [[x]]", 2), Ok(()));
    }

    /// A flow value with tricky scalars, and its depth.
    fn flow_value() -> impl Strategy<Value = (String, usize)> {
        let leaf = prop::sample::select(vec![
            "a",
            "it's",
            "x y 'z",
            "a#b",
            "'[x]'' {'",
            "\"]}\\\" [\"",
            "\"multi\n  line ]\"",
            "'multi\n  ''line'' ['",
            "&anchor v",
            "!tag 'q]'",
            "-x",
            "~",
        ])
        .prop_map(|s| (s.to_owned(), 0));
        let sep = prop::sample::select(vec![", ", ",\n  ", " , # ]]} [[\n  ", ",\n"]);
        leaf.prop_recursive(8, 64, 4, move |inner| {
            let sep = sep.clone();
            (prop::collection::vec((inner, sep), 0..4), any::<bool>()).prop_map(
                |(items, mapping)| {
                    let mut text = String::from(if mapping { "{" } else { "[" });
                    let mut deepest = 0;
                    for (k, ((item, d), sep)) in items.iter().enumerate() {
                        if k > 0 {
                            text.push_str(sep);
                        }
                        if mapping {
                            text.push_str(&format!("k{k}: "));
                        }
                        text.push_str(item);
                        deepest = deepest.max(*d);
                    }
                    text.push_str(if mapping { "}" } else { "]" });
                    (text, deepest + 1)
                },
            )
        })
    }

    proptest! {
        /// In flow context the count is exact: it equals the depth of what
        /// the YAML parser builds.
        #[test]
        fn flow_nesting_is_counted_exactly((text, expected) in flow_value()) {
            let v: serde_norway::Value = serde_norway::from_str(&text).unwrap();
            prop_assert_eq!(value_depth(&v), expected);
            prop_assert_eq!(depth(&text), expected);
        }

        /// Inside block structure — after block scalars, multi-line plain
        /// scalars and comments full of brackets and quotes — too.
        #[test]
        fn flow_nesting_inside_block_structure_is_counted_exactly(
            (a, da) in flow_value(),
            (b, db) in flow_value(),
        ) {
            let text = format!(
                "x: |\n  [[[ it's \"\n  ]]]\ny: plain it's\n  still [[[ plain\n# [[[ '\n\
                 z: {a}\nlist:\n  - >\n    {{{{ '\n  - key: {b}\n  - it's [[\n"
            );
            let v: Result<serde_norway::Value, _> = serde_norway::from_str(&text);
            prop_assert!(v.is_ok(), "{:?}\n{}", v, text);
            prop_assert_eq!(depth(&text), da.max(db));
        }
    }
}
