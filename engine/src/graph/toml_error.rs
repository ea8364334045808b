//! One-line descriptions of graph-file TOML errors that name the full key path of the value at
//! fault (`model.attention.kv_lora_rank`), found by matching the error's byte span against the
//! spans of the parsed document.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// `model.attention.kv_lora_rank: invalid value ... (line 22, column 16)`.
pub fn describe(err: &toml::de::Error, text: &str) -> String {
    let message = err.message().trim_end().replace('\n', " ");
    let Some(span) = err.span() else {
        return message;
    };
    let (line, column) = line_column(text, span.start);
    let at = format!("(line {line}, column {column})");
    let path = match DeTable::parse(text) {
        Ok(doc) => {
            let mut path = Vec::new();
            find_path(doc.get_ref(), &span, &mut path);
            path.join(".")
        }
        // A syntax error: the parser's own message and position say it all.
        Err(_) => String::new(),
    };
    // serde's "missing field `x`" is reported at the table: name the field inside it.
    let field = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    if message.starts_with("`model.") {
        // Our own messages (e.g. from `AttentionTable`) already name the full path.
        return format!("{message} {at}");
    }
    match (path.is_empty(), field) {
        (_, Some(f)) if message.starts_with("missing field") => {
            let full = if path.is_empty() {
                f.to_string()
            } else {
                format!("{path}.{f}")
            };
            format!("`{full}` is missing {at}")
        }
        (true, _) => format!("{message} {at}"),
        (false, _) => format!("`{path}`: {message} {at}"),
    }
}

/// Pushes onto `path` the keys leading to the innermost key or value whose span holds `span`.
fn find_path(table: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<String>) -> bool {
    for (key, value) in table.iter() {
        let in_key = contains(&key.span(), span);
        if in_key || contains(&value.span(), span) {
            path.push(key.get_ref().to_string());
            if !in_key {
                descend(value, span, path);
            }
            return true;
        }
    }
    // Tables opened by a `[header]` may have a span that covers only the header: look inside.
    for (key, value) in table.iter() {
        if let DeValue::Table(inner) = value.get_ref() {
            path.push(key.get_ref().to_string());
            if find_path(inner, span, path) {
                return true;
            }
            path.pop();
        }
    }
    false
}

fn descend(value: &Spanned<DeValue<'_>>, span: &Range<usize>, path: &mut Vec<String>) {
    match value.get_ref() {
        DeValue::Table(inner) => {
            find_path(inner, span, path);
        }
        DeValue::Array(items) => {
            if let Some((i, item)) = items
                .iter()
                .enumerate()
                .find(|(_, item)| contains(&item.span(), span))
            {
                path.push(i.to_string());
                descend(item, span, path);
            }
        }
        _ => {}
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
