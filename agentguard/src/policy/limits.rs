//! Bounded replacements for builtins whose output size comes from a number
//! in their arguments. regorus's execution timer is checked between rule
//! steps, not inside a builtin: `numbers.range(1, 100000000)` would build a
//! 100M-element array (gigabytes, seconds) before the timer could fire.
//! Extensions are looked up before builtins, so these take their place in
//! the interpreter. The bytecode VM resolves builtins from regorus's own
//! table into the compiled program, so [`install_vm`] swaps them there.

use std::sync::LazyLock;

use anyhow::bail;
use regorus::{
    Engine, LimitError, Value,
    rvm::{Instruction, Program, instructions::BuiltinCallParams, program::BuiltinInfo},
    unstable::{ArithOp, BUILTINS, BuiltinFcn, Expr, Ref, Span, numbers, sets},
};

use super::PolicyError;

/// Largest array `numbers.range` / `numbers.range_step` may build. Ports
/// (1..65535) fit; anything bigger is not a policy, it is a loop.
pub const MAX_RANGE: i64 = 100_000;

pub fn install(engine: &mut Engine) -> Result<(), PolicyError> {
    let err =
        |e: anyhow::Error| PolicyError::Compile(format!("cannot install builtin limits: {e:#}"));
    engine
        .add_extension(
            "numbers.range".into(),
            2,
            Box::new(|args: Vec<Value>| range(&args, None)),
        )
        .map_err(err)?;
    engine
        .add_extension(
            "numbers.range_step".into(),
            3,
            Box::new(|args: Vec<Value>| {
                let step = int_arg("numbers.range_step", &args, 2)?;
                if step <= 0 {
                    bail!("numbers.range_step: step must be a positive integer");
                }
                range(&args, Some(step))
            }),
        )
        .map_err(err)?;
    Ok(())
}

type VmBuiltin = fn(&Span, &[Ref<Expr>], &[Value], bool) -> anyhow::Result<Value>;

// The bytecode VM differs from the interpreter in two ways that matter for
// failing closed, and both are fixed in the compiled program:
//
// 1. It resolves builtins from regorus's table, so the engine's extensions
//    (the bounded `numbers.range`) are not seen: the program's builtin table
//    is pointed at our versions.
// 2. An error inside a rule body (a builtin error, `"a" + 1`) only makes
//    that body fail, the way OPA treats builtin errors, where the
//    interpreter fails the whole evaluation (deny). A `deny contains …` rule
//    that errors would then be silently skipped. So every builtin is called
//    through a wrapper that turns its error into one the VM never absorbs
//    (a `LimitError`), and arithmetic instructions become calls of the
//    interpreter's own arithmetic, wrapped the same way. The real message is
//    kept in a thread-local for the reason ([`take_builtin_error`]).

thread_local! {
    static BUILTIN_ERROR: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The message of the builtin error that stopped the last VM run on this
/// thread, if one did.
pub fn take_builtin_error() -> Option<String> {
    BUILTIN_ERROR.with(|m| m.borrow_mut().take())
}

/// Passes a result through, making an error fatal for the VM.
fn fatal(name: &str, result: anyhow::Result<Value>) -> anyhow::Result<Value> {
    result.map_err(|e| {
        if e.downcast_ref::<LimitError>().is_some() {
            return e;
        }
        let message = super::one_line(&e);
        let message = if message.contains(name) {
            message
        } else {
            format!("{name}: {message}")
        };
        BUILTIN_ERROR.with(|m| *m.borrow_mut() = Some(message));
        anyhow::Error::new(LimitError::MemoryLimitExceeded { usage: 0, limit: 0 })
    })
}

/// regorus's builtins in a fixed order; the position is the wrapper's
/// const parameter.
static TABLE: LazyLock<Vec<(&'static str, BuiltinFcn)>> = LazyLock::new(|| {
    let mut table: Vec<(&'static str, BuiltinFcn)> =
        BUILTINS.iter().map(|(name, f)| (*name, *f)).collect();
    table.sort_by_key(|(name, _)| *name);
    table
});

fn wrapped<const I: usize>(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> anyhow::Result<Value> {
    let Some((name, (f, _))) = TABLE.get(I) else {
        return fatal("builtin", Err(anyhow::anyhow!("no builtin #{I}")));
    };
    // Strict, like the interpreter: a bad argument is an error, not undefined.
    fatal(name, f(span, params, args, true))
}

macro_rules! row {
    ($r:literal) => {
        [
            wrapped::<{ $r * 16 }>,
            wrapped::<{ $r * 16 + 1 }>,
            wrapped::<{ $r * 16 + 2 }>,
            wrapped::<{ $r * 16 + 3 }>,
            wrapped::<{ $r * 16 + 4 }>,
            wrapped::<{ $r * 16 + 5 }>,
            wrapped::<{ $r * 16 + 6 }>,
            wrapped::<{ $r * 16 + 7 }>,
            wrapped::<{ $r * 16 + 8 }>,
            wrapped::<{ $r * 16 + 9 }>,
            wrapped::<{ $r * 16 + 10 }>,
            wrapped::<{ $r * 16 + 11 }>,
            wrapped::<{ $r * 16 + 12 }>,
            wrapped::<{ $r * 16 + 13 }>,
            wrapped::<{ $r * 16 + 14 }>,
            wrapped::<{ $r * 16 + 15 }>,
        ]
    };
}

const WRAPPERS: [[VmBuiltin; 16]; 16] = [
    row!(0),
    row!(1),
    row!(2),
    row!(3),
    row!(4),
    row!(5),
    row!(6),
    row!(7),
    row!(8),
    row!(9),
    row!(10),
    row!(11),
    row!(12),
    row!(13),
    row!(14),
    row!(15),
];

fn wrapper(name: &str) -> Option<VmBuiltin> {
    let i = TABLE.iter().position(|(n, _)| *n == name)?;
    WRAPPERS.get(i / 16).map(|row| row[i % 16])
}

fn vm_range(_: &Span, _: &[Ref<Expr>], args: &[Value], _: bool) -> anyhow::Result<Value> {
    fatal("numbers.range", range(args, None))
}

fn vm_range_step(_: &Span, _: &[Ref<Expr>], args: &[Value], _: bool) -> anyhow::Result<Value> {
    let stepped = int_arg("numbers.range_step", args, 2).and_then(|step| {
        if step <= 0 {
            bail!("numbers.range_step: step must be a positive integer");
        }
        range(args, Some(step))
    });
    fatal("numbers.range_step", stepped)
}

fn arith(op: ArithOp, span: &Span, params: &[Ref<Expr>], args: &[Value]) -> anyhow::Result<Value> {
    let name = match op {
        ArithOp::Add => "plus",
        ArithOp::Sub => "minus",
        ArithOp::Mul => "mul",
        ArithOp::Div => "div",
        ArithOp::Mod => "rem",
    };
    let (Some(a), Some(b), Some(ea), Some(eb)) =
        (args.first(), args.get(1), params.first(), params.get(1))
    else {
        return fatal(name, Err(anyhow::anyhow!("expects 2 operands")));
    };
    // The interpreter's own arithmetic (eval_arith_expr): set difference
    // for `-` on sets, numbers otherwise, strict.
    let result = match (&op, a, b) {
        (ArithOp::Sub, Value::Set(_), _) | (ArithOp::Sub, _, Value::Set(_)) => {
            sets::difference(ea, eb, a.clone(), b.clone())
        }
        _ => numbers::arithmetic_operation(span, &op, ea, eb, a.clone(), b.clone(), true),
    };
    fatal(name, result)
}

fn vm_add(s: &Span, p: &[Ref<Expr>], a: &[Value], _: bool) -> anyhow::Result<Value> {
    arith(ArithOp::Add, s, p, a)
}
fn vm_sub(s: &Span, p: &[Ref<Expr>], a: &[Value], _: bool) -> anyhow::Result<Value> {
    arith(ArithOp::Sub, s, p, a)
}
fn vm_mul(s: &Span, p: &[Ref<Expr>], a: &[Value], _: bool) -> anyhow::Result<Value> {
    arith(ArithOp::Mul, s, p, a)
}
fn vm_div(s: &Span, p: &[Ref<Expr>], a: &[Value], _: bool) -> anyhow::Result<Value> {
    arith(ArithOp::Div, s, p, a)
}
fn vm_mod(s: &Span, p: &[Ref<Expr>], a: &[Value], _: bool) -> anyhow::Result<Value> {
    arith(ArithOp::Mod, s, p, a)
}

/// Rewrites a compiled program so the VM fails closed like the interpreter
/// (see the comment above): bounded `numbers.range*`, every other builtin
/// wrapped, arithmetic instructions turned into wrapped calls. Fails if the
/// program is not shaped as expected, so a regorus change cannot silently
/// drop a limit: the bundle then runs on the interpreter.
pub fn install_vm(program: &mut Program) -> Result<(), String> {
    if program.resolved_builtins.len() != program.builtin_info_table.len() {
        return Err(format!(
            "{} builtins declared, {} resolved",
            program.builtin_info_table.len(),
            program.resolved_builtins.len()
        ));
    }
    for (info, slot) in program
        .builtin_info_table
        .iter()
        .zip(program.resolved_builtins.iter_mut())
    {
        slot.0 = match info.name.as_str() {
            "numbers.range" => vm_range,
            "numbers.range_step" => vm_range_step,
            name => wrapper(name).ok_or_else(|| format!("no wrapper for builtin {name}"))?,
        };
    }
    let mut arith_index: [Option<u16>; 5] = [None; 5];
    for i in 0..program.instructions.len() {
        let (slot, name, f, dest, left, right): (usize, &str, VmBuiltin, u8, u8, u8) =
            match program.instructions[i] {
                Instruction::Add { dest, left, right } => {
                    (0, "agentguard.plus", vm_add, dest, left, right)
                }
                Instruction::Sub { dest, left, right } => {
                    (1, "agentguard.minus", vm_sub, dest, left, right)
                }
                Instruction::Mul { dest, left, right } => {
                    (2, "agentguard.mul", vm_mul, dest, left, right)
                }
                Instruction::Div { dest, left, right } => {
                    (3, "agentguard.div", vm_div, dest, left, right)
                }
                Instruction::Mod { dest, left, right } => {
                    (4, "agentguard.rem", vm_mod, dest, left, right)
                }
                _ => continue,
            };
        let builtin_index = match arith_index[slot] {
            Some(index) => index,
            None => {
                let index = u16::try_from(program.builtin_info_table.len())
                    .map_err(|_| "too many builtins".to_owned())?;
                program.builtin_info_table.push(BuiltinInfo {
                    name: name.to_owned(),
                    num_args: 2,
                });
                program.resolved_builtins.push((f, 2));
                arith_index[slot] = Some(index);
                index
            }
        };
        let mut args = [0u8; 8];
        args[0] = left;
        args[1] = right;
        let params_index = program
            .instruction_data
            .add_builtin_call_params(BuiltinCallParams {
                dest,
                builtin_index,
                num_args: 2,
                args,
            });
        program.instructions[i] = Instruction::BuiltinCall { params_index };
    }
    Ok(())
}

fn int_arg(name: &str, args: &[Value], i: usize) -> anyhow::Result<i64> {
    match args.get(i) {
        Some(Value::Number(n)) if n.is_integer() => match n.as_i64() {
            Some(v) => Ok(v),
            None => bail!("{name}: operand {} is out of range", i + 1),
        },
        _ => bail!("{name}: operand {} must be an integer", i + 1),
    }
}

/// Inclusive, counting down when `to < from` (OPA's semantics).
fn range(args: &[Value], step: Option<i64>) -> anyhow::Result<Value> {
    let name = if step.is_some() {
        "numbers.range_step"
    } else {
        "numbers.range"
    };
    let from = int_arg(name, args, 0)?;
    let to = int_arg(name, args, 1)?;
    let step = step.unwrap_or(1);
    let span = i128::from(to) - i128::from(from);
    let count = span.abs() / i128::from(step) + 1;
    if count > i128::from(MAX_RANGE) {
        bail!("{name}: {count} elements exceed agentguard's limit of {MAX_RANGE}");
    }
    let dir = if to >= from { step } else { -step };
    let values = (0..count as i64)
        .map(|k| Value::from(from + k * dir))
        .collect::<Vec<_>>();
    Ok(Value::from(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &Value) -> Vec<i64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_i64().expect("int"))
            .collect()
    }

    #[test]
    fn ranges_match_opa() {
        let r = |a: i64, b: i64| range(&[Value::from(a), Value::from(b)], None).expect("range");
        assert_eq!(ints(&r(1, 3)), vec![1, 2, 3]);
        assert_eq!(ints(&r(3, 1)), vec![3, 2, 1]);
        assert_eq!(ints(&r(2, 2)), vec![2]);
        let s = range(&[Value::from(0), Value::from(10), Value::from(4)], Some(4)).expect("step");
        assert_eq!(ints(&s), vec![0, 4, 8]);
        let s = range(&[Value::from(10), Value::from(0), Value::from(4)], Some(4)).expect("step");
        assert_eq!(ints(&s), vec![10, 6, 2]);
    }

    #[test]
    fn huge_ranges_are_refused() {
        let e = range(&[Value::from(1), Value::from(100_000_000)], None).expect_err("too big");
        assert!(e.to_string().contains("limit"), "{e}");
    }
}
