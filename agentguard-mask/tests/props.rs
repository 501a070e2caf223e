//! Properties over random text with real entities mixed in:
//! - masking never lengthens a value by more than MAX_TOKEN_LEN per span;
//! - masking is idempotent;
//! - text with no findings comes back borrowed and byte-identical;
//! - streaming in any chunking gives exactly the one-shot output.

mod common;

use std::borrow::Cow;
use std::sync::OnceLock;

use agentguard_mask::{Engine, FieldContext, MAX_TOKEN_LEN, MaskConfig, Selection};
use common::Rng;
use common::*;
use proptest::prelude::*;

const GENS: &[fn(&mut Rng) -> String] = &[
    email, card, bad_card, iban, bad_iban, ssn, bad_ssn, itin, phone, aba, cpf, cnpj, nino, nhs,
    ipv4, ipv6, mac, btc, eth, dob, aws_key, github, gitlab, slack, openai, anthropic, gcp, jwt,
    pem, decoy,
];

/// Default selection, then everything on with each strategy.
fn setup() -> &'static (Engine, Vec<Selection>) {
    static S: OnceLock<(Engine, Vec<Selection>)> = OnceLock::new();
    S.get_or_init(|| {
        let cfg = MaskConfig {
            hash_key: Some("property-test-key-0123".into()),
            ..MaskConfig::default()
        };
        let e = Engine::new(&cfg).unwrap();
        let sels = [
            "",
            "all=redact",
            "all=mask",
            "all=hash",
            "all=partial:4",
            "all=null",
        ]
        .iter()
        .map(|s| {
            let items: Vec<&str> = s.split(',').filter(|s| !s.is_empty()).collect();
            e.selection(None, &items).unwrap()
        })
        .collect();
        (e, sels)
    })
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 .,:;@/_+=()\\-]{0,24}",
        "\\PC{0,6}",
        "(password|Bearer|sk-|eyJ|AKIA|://|ssn|phone)[ :=]{0,2}",
        (0..GENS.len(), any::<u64>()).prop_map(|(i, seed)| GENS[i](&mut Rng::new(seed))),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(piece(), 0..max),
        prop::sample::select(vec![" ", "\n", ", ", "", "\t"]),
    )
        .prop_map(|(v, sep)| v.join(sep))
}

fn ctx(i: usize) -> FieldContext<'static> {
    [
        FieldContext::text(),
        FieldContext::column("notes", Some("users.notes")),
        FieldContext::column("ssn", Some("users.ssn")),
        FieldContext::field("phone", Some("$.customer.phone")),
    ][i % 4]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn bounded_idempotent_and_borrowed_when_clean(t in text(12), s in 0usize..6, c in 0usize..4) {
        let (e, sels) = setup();
        let sel = &sels[s];
        let fc = ctx(c);
        let m = e.mask_value(&t, &fc, sel);
        prop_assert!(m.value.len() <= t.len() + MAX_TOKEN_LEN * m.spans(),
            "{} -> {} bytes with {} spans", t.len(), m.value.len(), m.spans());
        if m.findings.is_empty() {
            prop_assert!(matches!(m.value, Cow::Borrowed(_)));
            prop_assert_eq!(&*m.value, &*t);
        }
        let again = e.mask_value(&m.value, &fc, sel);
        prop_assert_eq!(&*again.value, &*m.value, "not idempotent on {:?}", t);
    }

    #[test]
    fn streaming_equals_one_shot(
        t in text(60),
        cuts in prop::collection::vec(0usize..4096, 0..12),
        s in 0usize..6,
        c in 0usize..4,
    ) {
        let (e, sels) = setup();
        let sel = &sels[s];
        let fc = ctx(c);
        let whole = e.mask_bytes(t.as_bytes(), &fc, sel);
        let bytes = t.as_bytes();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut st = e.stream(&fc, sel);
        let mut out = Vec::new();
        let mut at = 0;
        for cut in cuts {
            out.extend(st.push(&bytes[at..cut]));
            at = cut;
        }
        out.extend(st.push(&bytes[at..]));
        out.extend(st.finish());
        prop_assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&whole.value),
            "input {:?}", t
        );
        let total: u32 = st.findings().iter().map(|f| f.count).sum();
        let want: u32 = whole.findings.iter().map(|f| f.count).sum();
        prop_assert_eq!(total, want);
    }
}

#[test]
fn long_pem_split_in_tiny_chunks() {
    let (e, sels) = setup();
    let mut r = Rng::new(7);
    let text = format!("before {} after {}", pem(&mut r), email(&mut r));
    let fc = FieldContext::text();
    let whole = e.mask_bytes(text.as_bytes(), &fc, &sels[1]);
    let mut st = e.stream(&fc, &sels[1]);
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(7) {
        out.extend(st.push(chunk));
    }
    out.extend(st.finish());
    assert_eq!(out, whole.value.into_owned());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "before [REDACTED:private_key] after [REDACTED:email]"
    );
}
