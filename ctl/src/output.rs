//! What the commands print: tables for people (comfy-table), or the API's own JSON for
//! scripts (`--format json`). A table's columns are paths into each object
//! (`message_stats.publish_details.rate`); a missing field is an empty cell.

use std::io::{self, Write};

use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables and sentences, for people.
    Table,
    /// The API's JSON, one document, for scripts.
    Json,
}

/// A column: its header and the dotted path of its field.
pub type Column = (&'static str, &'static str);

/// The field at a dotted `path` of `value`.
pub fn field<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// The text of one cell: strings as they are, numbers without needless decimals, lists of
/// scalars joined by commas, anything else as compact JSON.
pub fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            (_, _, Some(f)) => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Array(items)) if items.iter().all(|i| !i.is_object() && !i.is_array()) => items
            .iter()
            .map(|i| cell(Some(i)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(map)) if map.is_empty() => String::new(),
        Some(other) => other.to_string(),
    }
}

fn table(headers: impl IntoIterator<Item = String>) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers);
    table
}

/// A line on stdout. Errors are returned, not panicked on: a closed pipe (`| head`) ends
/// the tool quietly (`main`).
pub fn line(text: impl std::fmt::Display) -> io::Result<()> {
    writeln!(io::stdout().lock(), "{text}")
}

/// `value` as pretty JSON on stdout.
pub fn print_json(value: &Value) -> io::Result<()> {
    line(serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()))
}

/// A list of objects: a table of `columns`, or the JSON array as it is.
pub fn print_rows(format: Format, rows: &[Value], columns: &[Column]) -> io::Result<()> {
    match format {
        Format::Json => print_json(&Value::Array(rows.to_vec())),
        Format::Table => line(rows_table(rows, columns)),
    }
}

/// The table of `rows` (also what the tests check).
pub fn rows_table(rows: &[Value], columns: &[Column]) -> Table {
    let mut out = table(columns.iter().map(|(header, _)| (*header).to_owned()));
    for row in rows {
        out.add_row(columns.iter().map(|(_, path)| cell(field(row, path))));
    }
    out
}

/// One object: a two-column table of its fields (nested objects as dotted keys), or its JSON.
pub fn print_object(format: Format, value: &Value) -> io::Result<()> {
    if format == Format::Json {
        return print_json(value);
    }
    let mut pairs = Vec::new();
    flatten("", value, &mut pairs);
    let mut out = table(["key".to_owned(), "value".to_owned()]);
    for (key, value) in pairs {
        out.add_row([key, value]);
    }
    line(out)
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, v) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}.{i}"), v, out);
            }
        }
        other => out.push((prefix.to_owned(), cell(Some(other)))),
    }
}

/// A sentence for people after a change; in JSON, the API's answer when it has one.
pub fn print_done(format: Format, sentence: &str, answer: &Value) -> io::Result<()> {
    match format {
        Format::Table => line(sentence),
        Format::Json if !answer.is_null() => print_json(answer),
        Format::Json => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_read_nested_paths_and_render_plainly() {
        let q = json!({"name": "q", "n": 3, "rate": 1.25, "whole": 4.0, "tags": ["a", "b"],
                       "message_stats": {"publish_details": {"rate": 0.5}}, "args": {}});
        assert_eq!(cell(field(&q, "name")), "q");
        assert_eq!(cell(field(&q, "n")), "3");
        assert_eq!(cell(field(&q, "rate")), "1.25");
        assert_eq!(cell(field(&q, "whole")), "4");
        assert_eq!(cell(field(&q, "tags")), "a,b");
        assert_eq!(
            cell(field(&q, "message_stats.publish_details.rate")),
            "0.50"
        );
        assert_eq!(
            cell(field(&q, "message_stats.deliver_get_details.rate")),
            ""
        );
        assert_eq!(cell(field(&q, "args")), "");
        let table = rows_table(&[q], &[("name", "name"), ("n", "n")]).to_string();
        assert!(table.contains("name") && table.contains('3'), "{table}");
    }

    #[test]
    fn objects_flatten_to_dotted_keys() {
        let mut pairs = Vec::new();
        flatten(
            "",
            &json!({"a": {"b": 1, "c": "x"}, "d": [], "l": [{"p": 1}]}),
            &mut pairs,
        );
        assert_eq!(
            pairs,
            [
                ("a.b".to_owned(), "1".to_owned()),
                ("a.c".to_owned(), "x".to_owned()),
                ("d".to_owned(), String::new()),
                ("l.0.p".to_owned(), "1".to_owned()),
            ]
        );
    }
}
