//! What either side of a Redis connection can send the guard: the bytes
//! as commands (multibulk or inline, each made into a policy request), and
//! as replies (each re-spliced with every string replaced, as masking does,
//! which must decode again to the same shape).
#![no_main]

use agentguard::redis::{
    RedisRequest,
    codec::{self, Decoder, Kind, Node},
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn strings<'n>(node: &'n Node, out: &mut Vec<&'n Node>) {
    match &node.kind {
        Kind::Bulk(_) | Kind::Verbatim(_) => out.push(node),
        Kind::Attribute(_, inner) => strings(inner, out),
        Kind::Array(v) | Kind::Map(v) | Kind::Set(v) | Kind::Push(v) => {
            v.iter().for_each(|n| strings(n, out))
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut d = Decoder::default();
    while let Ok(Some(cmd)) = d.command(&mut buf) {
        let argv: Vec<&[u8]> = cmd.args.iter().map(|a| &a[..]).collect();
        let r = RedisRequest::new(&argv, cmd.raw.len(), cmd.inline, false, 0);
        let _ = r.summary().line();
        let _ = RedisRequest::too_large(&argv);
    }
    let mut buf = BytesMut::from(data);
    let mut d = Decoder::default();
    while let Ok(Some(frame)) = d.reply(&mut buf) {
        let mut leaves = Vec::new();
        strings(&frame.node, &mut leaves);
        let n = leaves.len();
        let edits = leaves.into_iter().map(|l| (l, b"[x]".to_vec())).collect();
        let out = codec::splice(&frame.raw, edits);
        let again = Decoder::default()
            .reply(&mut BytesMut::from(&out[..]))
            .expect("a spliced reply decodes")
            .expect("a spliced reply is whole");
        assert_eq!(again.raw.len(), out.len());
        let mut check = Vec::new();
        strings(&again.node, &mut check);
        assert_eq!(check.len(), n);
        assert!(check.iter().all(|l| l.text(&again.raw) == Some(&b"[x]"[..])));
    }
});
