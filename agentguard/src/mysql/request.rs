//! What one MySQL command asks, for policy: `input.request` of kind
//! `mysql`. SQL goes through the same analysis as PostgreSQL's
//! ([`crate::pg::sql::analyze_in`], with sqlparser's MySqlDialect), so the
//! shipped SQL rules apply to both databases unchanged; commands that are
//! not SQL carry `command` and an equivalent SQL text.

use serde::Serialize;
use sqlparser::dialect::MySqlDialect;

use crate::{
    audit::RequestSummary,
    pg::sql::{self, SqlAnalysis, StatementInfo},
};

/// `input.request` for kind `mysql`.
#[derive(Debug, Clone, Serialize)]
pub struct MysqlRequest {
    /// `query`, `stmt_prepare`, `stmt_execute`, `init_db`, `field_list`,
    /// `process_kill`, `set_option`, `change_user`, `binlog_dump`,
    /// `binlog_dump_gtid`, `register_slave`, `local_infile`.
    pub command: &'static str,
    /// The SQL (for commands that are not SQL: what they amount to, such
    /// as `USE shop` for COM_INIT_DB).
    pub sql: String,
    /// `sql` lowercased with its literals replaced (see `SqlAnalysis::shape`).
    pub sql_shape: String,
    pub statements: Vec<StatementInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
    pub database: Option<String>,
    pub db_user: Option<String>,
    /// LOAD DATA LOCAL INFILE: the file the server asks the agent's host
    /// to send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// COM_STMT_EXECUTE: the parameter values as text (`null`: NULL);
    /// absent when they could not be read (sent as long data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<Option<String>>>,
    /// The guard logged in with a stored credential (`db_user` is its role).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<crate::credentials::CredentialUse>,
}

impl MysqlRequest {
    pub fn new(command: &'static str, sql: String, analysis: SqlAnalysis) -> Self {
        Self {
            command,
            sql_shape: if analysis.shape.is_empty() {
                sql.to_lowercase()
            } else {
                analysis.shape
            },
            sql,
            statements: analysis.statements,
            parse_error: analysis.parse_error,
            database: None,
            db_user: None,
            file: None,
            params: None,
            credential: None,
        }
    }

    /// A command with no SQL of its own.
    pub fn bare(command: &'static str, sql: String) -> Self {
        Self::new(command, sql, SqlAnalysis::default())
    }

    pub fn summary(&self) -> RequestSummary {
        let mut operations: Vec<String> = self
            .statements
            .iter()
            .flat_map(|s| s.operations.iter().cloned())
            .collect();
        if operations.is_empty() {
            operations.push(self.command.to_owned());
        }
        operations.sort();
        operations.dedup();
        let mut tables: Vec<String> = self
            .statements
            .iter()
            .flat_map(|s| s.tables.iter().cloned())
            .collect();
        tables.sort();
        tables.dedup();
        RequestSummary::Sql {
            sql: self.sql.clone(),
            protocol: "mysql".into(),
            operations,
            tables,
            database: self.database.clone(),
            db_user: self.db_user.clone(),
        }
    }
}

/// A MySQL SQL string analysed. On top of the shared analysis:
/// executable comments (`/*! … */`, MariaDB's `/*M! … */`), which the
/// server runs and a parser skips as comments, make the string
/// unanalysable; `LOAD DATA [LOCAL] INFILE`, which sqlparser's MySQL
/// grammar lacks, is recognised by its leading keywords.
pub fn analyze(text: &str) -> SqlAnalysis {
    if text.contains("/*!") || text.contains("/*M!") || text.contains("/*m!") {
        return SqlAnalysis {
            statements: Vec::new(),
            parse_error: Some("executable comments (/*! ... */) are not analysed".into()),
            shape: text.to_lowercase(),
        };
    }
    if let Some(load) = load_data(text) {
        return SqlAnalysis {
            statements: vec![load],
            parse_error: None,
            shape: text.to_lowercase(),
        };
    }
    sql::analyze_in(&MySqlDialect {}, text)
}

/// `LOAD DATA [LOW_PRIORITY | CONCURRENT] [LOCAL] INFILE 'f' [REPLACE |
/// IGNORE] INTO TABLE t …`, alone in its string. Without LOCAL the server
/// reads its own file system (reported as `copy_file`, which the shipped
/// policy refuses); with LOCAL the server asks the client for the file,
/// which is decided again when it does.
fn load_data(text: &str) -> Option<StatementInfo> {
    let body = text.trim().trim_end_matches(';');
    if body.contains(';') {
        return None;
    }
    let words: Vec<&str> = body.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    if upper.first().map(String::as_str) != Some("LOAD")
        || upper.get(1).map(String::as_str) != Some("DATA")
    {
        return None;
    }
    let local = upper.iter().any(|w| w == "LOCAL");
    let table_at = upper
        .windows(2)
        .position(|w| w[0] == "INTO" && w[1] == "TABLE")?
        + 2;
    let table = words.get(table_at)?;
    let table = table.split('(').next().unwrap_or(table);
    let table = sql::normalize_name(table);
    Some(StatementInfo {
        operation: "load".into(),
        operations: vec!["load".into()],
        tables: vec![table.clone()],
        tables_read: Vec::new(),
        tables_written: vec![table],
        has_where: true,
        functions: Vec::new(),
        copy_program: false,
        copy_file: !local,
        prepared_name: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_dialect_with_backticks() {
        let a = analyze("DELETE FROM `Users`; UPDATE orders SET a = 1 WHERE id = 2");
        assert!(a.parse_error.is_none(), "{a:?}");
        assert_eq!(a.statements[0].tables_written, vec!["Users"]);
        assert!(!a.statements[0].has_where);
        assert!(a.statements[1].has_where);
        let s = &analyze("select * from shop.users limit 1").statements[0];
        assert_eq!(s.tables_read, vec!["shop.users"]);
    }

    #[test]
    fn executable_comments_are_not_analysed() {
        let a = analyze("SELECT 1 /*!50000 , (SELECT 1 FROM t) */");
        assert!(a.parse_error.is_some());
        assert!(analyze("/*M!100000 DROP TABLE t */").parse_error.is_some());
    }

    #[test]
    fn load_data() {
        let a =
            analyze("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE `t` FIELDS TERMINATED BY ':'");
        let s = &a.statements[0];
        assert_eq!((s.operation.as_str(), s.copy_file), ("load", false));
        assert_eq!(s.tables_written, vec!["t"]);
        let s = &analyze("load data infile '/var/lib/x' into table t2").statements[0];
        assert!(s.copy_file);
    }

    #[test]
    fn mysql_specific_statements() {
        for (q, op) in [
            ("SHOW TABLES", "show"),
            ("USE shop", "use"),
            ("REPLACE INTO t VALUES (1)", "replace"),
            ("DROP DATABASE shop", "drop"),
        ] {
            let a = analyze(q);
            let got = a.statements.first().map(|s| s.operation.clone());
            assert!(
                got.as_deref() == Some(op) || (op == "replace" && got.as_deref() == Some("insert")),
                "{q}: {a:?}"
            );
        }
    }
}
