//! Whether a bundle can produce a conflict, which regorus's VM and its
//! interpreter treat differently.
//!
//! The interpreter fails the evaluation (a deny) when a complete rule or a
//! function gets two different values, when a rule body yields several
//! values, or when an object gets the same key twice. The VM instead makes
//! the rule undefined, so a `deny contains …` that depends on it is skipped
//! and the request may be allowed. The VM is therefore only used for
//! bundles where no such conflict can arise, judged from the syntax,
//! conservatively:
//!
//! - a complete rule or function defined more than once whose values are
//!   not all the same constant;
//! - a complete rule or function whose body (or value) iterates outside a
//!   comprehension (`some`, `x[_]`, `x[i]`) and whose value is not a constant;
//! - a rule with a key in its head (`o[k] := v`), or an object
//!   comprehension anywhere.
//!
//! `data.agentguard.decision` itself is exempt: a conflict there is a deny
//! on both paths. So are packages whose name ends in `_test`.

use std::collections::BTreeMap;

use regorus::{
    Engine, Value,
    unstable::{Expr, Literal, Query, Rule, RuleHead},
};

#[derive(Default)]
struct Flags {
    object_compr: bool,
    iterates: bool,
}

fn walk_query(q: &Query, in_compr: bool, f: &mut Flags) {
    for stmt in &q.stmts {
        match &stmt.literal {
            Literal::SomeVars { .. } => f.iterates |= !in_compr,
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                f.iterates |= !in_compr;
                if let Some(k) = key {
                    walk(k, in_compr, f);
                }
                walk(value, in_compr, f);
                walk(collection, in_compr, f);
            }
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => walk(expr, in_compr, f),
            Literal::Every { domain, query, .. } => {
                walk(domain, in_compr, f);
                walk_query(query, true, f);
            }
        }
        for m in &stmt.with_mods {
            walk(&m.refr, in_compr, f);
            walk(&m.r#as, in_compr, f);
        }
    }
}

fn walk(e: &Expr, in_compr: bool, f: &mut Flags) {
    match e {
        Expr::ObjectCompr { .. } => f.object_compr = true,
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            walk(term, true, f);
            walk_query(query, true, f);
        }
        Expr::RefBrack { refr, index, .. } => {
            if matches!(index.as_ref(), Expr::Var { .. }) {
                f.iterates |= !in_compr;
            }
            walk(refr, in_compr, f);
            walk(index, in_compr, f);
        }
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for i in items {
                walk(i, in_compr, f);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                walk(k, in_compr, f);
                walk(v, in_compr, f);
            }
        }
        Expr::Call { fcn, params, .. } => {
            walk(fcn, in_compr, f);
            for p in params {
                walk(p, in_compr, f);
            }
        }
        Expr::UnaryExpr { expr, .. } => walk(expr, in_compr, f),
        Expr::RefDot { refr, .. } => walk(refr, in_compr, f),
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            walk(lhs, in_compr, f);
            walk(rhs, in_compr, f);
        }
        Expr::Membership { key, value, .. } => {
            if let Some(k) = key {
                walk(k, in_compr, f);
            }
            walk(value, in_compr, f);
        }
        _ => {}
    }
}

fn constant(e: &Expr) -> Option<Value> {
    match e {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => Some(value.clone()),
        _ => None,
    }
}

fn has_key(e: &Expr) -> bool {
    match e {
        Expr::RefBrack { .. } => true,
        Expr::RefDot { refr, .. } => has_key(refr),
        _ => false,
    }
}

/// Why the bundle must not run on the VM, if it must not.
pub fn risk(engine: &mut Engine, entry_package: &str, entry_rule: &str) -> Option<String> {
    // (package.rule) -> (definitions, values: None = not a constant)
    let mut groups: BTreeMap<String, (usize, Vec<Option<Value>>)> = BTreeMap::new();
    for module in engine.get_modules() {
        let package = super::bundle::ref_path(&module.package.refr).join(".");
        if package.ends_with("_test") {
            continue;
        }
        for rule in &module.policy {
            let Rule::Spec { head, bodies, .. } = rule.as_ref() else {
                continue;
            };
            let mut flags = Flags::default();
            for body in bodies {
                walk_query(&body.query, false, &mut flags);
                if let Some(a) = &body.assign {
                    walk(&a.value, false, &mut flags);
                }
            }
            let (refr, head_assign) = match head {
                RuleHead::Set { key, .. } => {
                    if let Some(k) = key {
                        walk(k, false, &mut flags);
                    }
                    if flags.object_compr {
                        return Some(format!(
                            "{package}: an object comprehension may repeat a key"
                        ));
                    }
                    continue;
                }
                RuleHead::Compr { refr, assign, .. } | RuleHead::Func { refr, assign, .. } => {
                    (refr, assign)
                }
            };
            if let Some(a) = head_assign {
                walk(&a.value, false, &mut flags);
            }
            let name = refr.span().text().to_owned();
            if flags.object_compr {
                return Some(format!(
                    "{package}.{name}: an object comprehension may repeat a key"
                ));
            }
            if has_key(refr) {
                return Some(format!("{package}.{name}: a rule with a key may repeat it"));
            }
            if package == entry_package && name == entry_rule {
                continue;
            }
            // The value of each body: its own (`else`) or the head's; none is `true`.
            let head_value = head_assign
                .as_ref()
                .map_or(Some(Value::Bool(true)), |a| constant(&a.value));
            let values: Vec<Option<Value>> = if bodies.is_empty() {
                vec![head_value]
            } else {
                bodies
                    .iter()
                    .map(|b| match &b.assign {
                        Some(a) => constant(&a.value),
                        None if b.is_else => Some(Value::Bool(true)),
                        None => head_value.clone(),
                    })
                    .collect()
            };
            if flags.iterates && values.iter().any(Option::is_none) {
                return Some(format!(
                    "{package}.{name}: its body iterates, so it may have several values"
                ));
            }
            let group = groups.entry(format!("{package}.{name}")).or_default();
            group.0 += 1;
            group.1.extend(values);
        }
    }
    for (name, (definitions, values)) in groups {
        if definitions < 2 {
            continue;
        }
        let first = values.first().cloned().flatten();
        if first.is_none() || values.iter().any(|v| *v != first) {
            return Some(format!(
                "{name}: its {definitions} definitions may give different values"
            ));
        }
    }
    None
}
