//! Aligned text tables for the cluster commands' default output.

use serde_json::Value;

/// Rows under upper-case headers, each column as wide as its widest cell.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row; missing cells print empty.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table's lines, without trailing spaces.
    pub fn lines(&self) -> Vec<String> {
        let n = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, w) in width.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                s.push_str(c);
                if i + 1 < n {
                    s.push_str(&" ".repeat(w - c.chars().count() + 2));
                }
            }
            s.trim_end().to_string()
        };
        std::iter::once(line(&self.headers)).chain(self.rows.iter().map(|r| line(r))).collect()
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        for l in self.lines() {
            println!("{l}");
        }
    }
}

/// A JSON value as one table cell: strings bare, null as `-`, line breaks and tabs escaped
/// so that a value cannot break the table's lines.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => text(s),
        other => other.to_string(),
    }
}

/// Text as one table cell (line breaks and tabs escaped).
pub fn text(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n").replace('\r', "\\r").replace('\t', "\\t")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut t = Table::new(&["ID", "ADDRESS", "LEADER"]);
        t.row(vec!["1".into(), "127.0.0.1:7001".into(), "true".into()]);
        t.row(vec!["12".into(), "h:1".into(), cell(&json!(null))]);
        assert_eq!(
            t.lines(),
            vec!["ID  ADDRESS         LEADER", "1   127.0.0.1:7001  true", "12  h:1             -"]
        );
    }

    #[test]
    fn cells_cannot_break_lines() {
        assert_eq!(cell(&json!("a\nb\tc\\")), "a\\nb\\tc\\\\");
        assert_eq!(cell(&json!(42)), "42");
    }
}
