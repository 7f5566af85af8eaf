//! Guard language tests. The `row_*` tests are the example table of engine.md §2.4, one test
//! per row, with the outcome our decisions.md gives (differences from the reference are
//! named in the test).

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("test ctx must be an object, got {other}"),
    }
}

/// Evaluates `guard` against `ctx` with an empty payload.
fn check(guard: &str, ctx: Value) -> bool {
    let g = Guard::compile(guard).unwrap_or_else(|e| panic!("{guard:?} should compile: {e}"));
    g.evaluate(&obj(ctx), &Map::new())
}

/// Asserts that `guard` is rejected, with the error at `column`.
fn rejects_at(guard: &str, column: usize) -> GuardError {
    match Guard::compile(guard) {
        Ok(g) => panic!("{guard:?} should be rejected, parsed as {:?}", g.expr()),
        Err(e) => {
            assert_eq!(e.column, column, "{guard:?}: {e}");
            e
        }
    }
}

#[test]
fn row_bare_field_truthiness_of_scalars() {
    assert!(check("ctx.a", json!({"a": 1})));
    assert!(!check("ctx.a", json!({"a": 0})));
    assert!(check("ctx.a", json!({"a": "0"})));
    assert!(check("ctx.a", json!({"a": "false"})));
}

#[test]
fn row_bare_field_empty_containers_and_missing_are_false() {
    assert!(!check("ctx.a", json!({"a": []})));
    assert!(!check("ctx.a", json!({"a": {}})));
    assert!(!check("ctx.a", json!({})));
    // ctx = null and ctx = [1] cannot occur: an instance context is always an object
    // (decisions.md); instance::tests covers that such initial_ctx values are rejected.
}

#[test]
fn row_equality_with_integer_literal() {
    assert!(check("ctx.a == 1", json!({"a": 1.0})));
    assert!(!check("ctx.a == 1", json!({"a": "1"})));
    assert!(!check("ctx.a == 1", json!({"a": true})));
}

#[test]
fn row_equality_has_no_epsilon() {
    // Reference: true (absolute epsilon). decisions.md: exact comparison.
    assert!(!check("ctx.a == 0", json!({"a": 1e-17})));
    assert!(check("ctx.a == 0", json!({"a": 0.0})));
}

#[test]
fn row_negative_zero_and_leading_zeros() {
    assert!(check("ctx.a == -0", json!({"a": 0})));
    assert!(check("ctx.a == 007", json!({"a": 7})));
}

#[test]
fn row_null_comparisons_on_missing_field() {
    assert!(check("ctx.a == null", json!({})));
    assert!(!check("ctx.a != null", json!({})));
}

#[test]
fn row_not_equal_on_type_mismatch_is_true() {
    assert!(check("ctx.a != 5", json!({"a": "5"})));
}

#[test]
fn row_true_does_not_equal_one() {
    assert!(!check("ctx.a == true", json!({"a": 1})));
}

#[test]
fn row_ordering_needs_a_number() {
    assert!(!check("ctx.a > 5", json!({"a": "10"})));
    assert!(!check("ctx.a > 5", json!({"a": true})));
}

#[test]
fn row_negated_ordering_on_missing_field() {
    assert!(check("!(ctx.a > 5)", json!({})));
}

#[test]
fn row_not_binds_looser_than_comparison() {
    assert!(!check("!ctx.a == 5", json!({"a": 5})));
    assert!(check("!ctx.a == 5", json!({"a": 4})));
}

#[test]
fn row_and_binds_tighter_than_or() {
    assert!(check(
        "ctx.a || ctx.b && ctx.c",
        json!({"a": true, "b": false, "c": false})
    ));
    assert!(check(
        "ctx.a && ctx.b || ctx.c",
        json!({"a": false, "b": false, "c": true})
    ));
}

#[test]
fn row_parentheses_group() {
    assert!(!check(
        "(ctx.a || ctx.b) && ctx.c",
        json!({"a": true, "b": true, "c": false})
    ));
}

#[test]
fn row_path_through_a_string_is_missing() {
    assert!(!check("ctx.a.b.c", json!({"a": {"b": "x"}})));
}

#[test]
fn row_dotted_number_is_a_key_not_an_index() {
    assert!(!check("ctx.items.0", json!({"items": [1]})));
    // The extension spells indexing with brackets.
    assert!(check("ctx.items[0]", json!({"items": [1]})));
}

#[test]
fn row_string_escapes_are_decoded() {
    // Reference keeps the literal raw (false / true); decisions.md decodes JSON escapes.
    assert!(check(r#"ctx.a == "a\"b""#, json!({"a": "a\"b"})));
    assert!(!check(r#"ctx.a == "a\"b""#, json!({"a": "a\\\"b"})));
}

#[test]
fn row_large_integers_compare_exactly() {
    // Reference: true (both rounded to f64). decisions.md: integers compare exactly.
    assert!(!check(
        "ctx.a >= 9007199254740993",
        json!({"a": 9_007_199_254_740_992u64})
    ));
    assert!(check(
        "ctx.a >= 9007199254740993",
        json!({"a": 9_007_199_254_740_993u64})
    ));
}

#[test]
fn row_loose_decimal_forms() {
    assert!(check("ctx.a > .5", json!({"a": 0.6})));
    assert!(check("ctx.a > 5.", json!({"a": 6})));
    assert!(check("ctx.a > -.5", json!({"a": -0.1})));
}

#[test]
fn row_exponent_is_part_of_the_number() {
    // Reference parses `ctx.a > 1` and ignores `e3` (true). We read 1e3 = 1000.
    assert!(!check("ctx.a > 1e3", json!({"a": 2})));
    assert!(check("ctx.a > 1e3", json!({"a": 1001})));
    assert!(check("ctx.a < 2.5E-1", json!({"a": 0.2})));
}

#[test]
fn row_trailing_input_is_rejected_with_its_column() {
    // Reference: all three silently mean `ctx.a`.
    let e = rejects_at("ctx.a = 5", 7);
    assert!(e.message.contains("'=='"), "{e}");
    rejects_at("ctx.a foo", 7);
    rejects_at("ctx.a)", 6);
}

#[test]
fn row_single_pipe_is_rejected() {
    let e = rejects_at("ctx.a | ctx.b", 7);
    assert!(e.message.contains("'||'"), "{e}");
}

#[test]
fn row_hyphen_in_field_name_is_rejected() {
    rejects_at("ctx.my-field", 7);
}

#[test]
fn row_keyword_prefixes_are_not_keywords() {
    let e = rejects_at("ctx.a == trueish", 10);
    assert!(e.message.contains("trueish"), "{e}");
    rejects_at("ctx.a == nullx", 10);
}

#[test]
fn row_parse_errors() {
    rejects_at("ctx.a == 'x'", 10);
    rejects_at(r#"ctx.a > "x""#, 9);
    let e = rejects_at("(ctx.a", 7);
    assert!(e.message.contains("')'"), "{e}");
    let e = rejects_at("ctx.", 5);
    assert!(e.message.contains("empty field name"), "{e}");
    rejects_at(r#""""#, 1);
}

#[test]
fn row_literal_on_the_left_is_an_extension() {
    // Reference: parse error. decisions.md: a literal may stand on either side.
    assert!(check("5 < ctx.a", json!({"a": 6})));
    assert!(!check("5 < ctx.a", json!({"a": 5})));
    assert!(check("\"x\" == ctx.a", json!({"a": "x"})));
}

#[test]
fn empty_and_blank_guards_are_rejected() {
    for g in ["", "   ", "\t\n"] {
        let e = Guard::compile(g).unwrap_err();
        assert_eq!(e.message, "empty guard expression");
    }
}

#[test]
fn operand_must_be_a_field_or_literal() {
    let e = rejects_at("amount > 5", 1);
    assert!(e.message.contains("'amount'"), "{e}");
    rejects_at("ctx > 5", 1);
    rejects_at("ctx.a &&", 9);
    rejects_at("&& ctx.a", 1);
    rejects_at("!", 2);
    rejects_at("()", 2);
}

#[test]
fn literal_alone_or_literal_pairs_are_rejected() {
    rejects_at("true", 1);
    rejects_at("1 == 1", 1);
}

#[test]
fn length_of_arrays_and_strings() {
    assert!(check("ctx.items.length == 2", json!({"items": [1, 2]})));
    assert!(check("ctx.items.length > 0", json!({"items": [1]})));
    assert!(!check("ctx.items.length", json!({"items": []})));
    assert!(check("ctx.name.length == 3", json!({"name": "añb"})));
    // On an object, `length` is an ordinary key.
    assert!(check(
        "ctx.o.length == \"x\"",
        json!({"o": {"length": "x"}})
    ));
    assert!(check("ctx.o.length == null", json!({"o": {}})));
}

#[test]
fn array_indexing() {
    let ctx = json!({"items": [{"sku": "a"}, {"sku": "b"}]});
    assert!(check("ctx.items[1].sku == \"b\"", ctx.clone()));
    assert!(check("ctx.items[5] == null", ctx.clone()));
    assert!(check("ctx.items[0][0] == null", ctx));
    rejects_at("ctx.items[]", 10);
    rejects_at("ctx.items[x]", 10);
    rejects_at("ctx.items[1", 12);
    rejects_at("ctx.items[99999999999999999999999999]", 10);
}

#[test]
fn payload_fields_are_readable() {
    let g = Guard::compile("payload.amount <= ctx.limit && payload.ok").unwrap();
    let ctx = obj(json!({"limit": 100}));
    assert!(g.evaluate(&ctx, &obj(json!({"amount": 100, "ok": true}))));
    assert!(!g.evaluate(&ctx, &obj(json!({"amount": 101, "ok": true}))));
    assert!(!g.evaluate(&ctx, &obj(json!({"amount": 1}))));
}

#[test]
fn field_to_field_equality_is_structural() {
    let g = Guard::compile("ctx.a == payload.a").unwrap();
    let ctx = obj(json!({"a": {"x": [1, 2.0]}}));
    assert!(g.evaluate(&ctx, &obj(json!({"a": {"x": [1.0, 2]}}))));
    assert!(!g.evaluate(&ctx, &obj(json!({"a": {"x": [1]}}))));
}

#[test]
fn full_json_numbers() {
    assert!(check("ctx.a == -0.5", json!({"a": -0.5})));
    assert!(check("ctx.a == 1e2", json!({"a": 100})));
    assert!(check("ctx.a == 1E+2", json!({"a": 100})));
    assert!(check(
        "ctx.a == 18446744073709551615",
        json!({"a": u64::MAX})
    ));
    assert!(check("ctx.a < 0", json!({"a": i64::MIN})));
    rejects_at("ctx.a == 1e", 10);
    rejects_at("ctx.a == -", 10);
    rejects_at("ctx.a == .", 10);
    rejects_at("ctx.a == +5", 10);
}

#[test]
fn huge_numbers_are_errors_not_panics() {
    let digits = "9".repeat(400);
    let e = rejects_at(&format!("ctx.a == {digits}"), 10);
    assert!(e.message.contains("out of range"), "{e}");
    rejects_at("ctx.a > 1e999", 9);
    // Fits an f64 though not an i128: accepted, compared as a float.
    assert!(check(
        &format!("ctx.a < {}", "9".repeat(60)),
        json!({"a": 1})
    ));
}

#[test]
fn json_escapes_in_strings() {
    assert!(check(r#"ctx.a == "\u00e9\n\t\\""#, json!({"a": "é\n\t\\"})));
    assert!(check(r#"ctx.a == "\ud83d\ude00""#, json!({"a": "😀"})));
    rejects_at(r#"ctx.a == "\ud83d""#, 11);
    rejects_at(r#"ctx.a == "\q""#, 11);
    rejects_at(r#"ctx.a == "\u12""#, 11);
    // A lone trailing backslash panicked the reference.
    rejects_at(r#"ctx.a == "abc\"#, 10);
}

#[test]
fn non_ascii_input_never_panics() {
    // Each of these panicked the reference parser.
    assert!(check("ctx.prénom == \"José\"", json!({"prénom": "José"})));
    assert!(check("ctx.a ==\u{a0}\"ü\"", json!({"a": "ü"})));
    assert!(check("ctx.数量 > 1", json!({"数量": 2})));
    let e = rejects_at("ctx.a == ☃", 10);
    assert!(e.message.contains('☃'), "{e}");
    rejects_at("ctx.a\u{200b}", 6);
}

#[test]
fn columns_count_characters_not_bytes() {
    // 'é' is two bytes but one column.
    rejects_at("ctx.é = 1", 7);
}

#[test]
fn nesting_limit_is_enforced() {
    let ok = format!("{}ctx.a{}", "(".repeat(64), ")".repeat(64));
    assert!(Guard::compile(&ok).is_ok());
    let too_deep = format!("{}ctx.a{}", "(".repeat(65), ")".repeat(65));
    let e = Guard::compile(&too_deep).unwrap_err();
    assert_eq!(e.column, 65);
    assert!(e.message.contains("64"), "{e}");
    let nots = format!("{}ctx.a", "!".repeat(65));
    assert!(Guard::compile(&nots).is_err());
    assert!(Guard::compile(&format!("{}ctx.a", "!".repeat(64))).is_ok());
}

#[test]
fn length_limit_is_enforced() {
    let long_ok = format!("ctx.a == \"{}\"", "x".repeat(MAX_GUARD_BYTES - 11));
    assert_eq!(long_ok.len(), MAX_GUARD_BYTES);
    assert!(Guard::compile(&long_ok).is_ok());
    let too_long = format!("ctx.a == \"{}\"", "x".repeat(MAX_GUARD_BYTES - 10));
    let e = Guard::compile(&too_long).unwrap_err();
    assert!(e.message.contains("4096"), "{e}");
}

#[test]
fn long_flat_chains_do_not_nest() {
    let chain = vec!["ctx.a"; 400].join(" && ");
    assert!(chain.len() < MAX_GUARD_BYTES);
    assert!(check(&chain, json!({"a": 1})));
}

#[test]
fn source_is_kept_verbatim() {
    let g = Guard::compile("  ctx.a  ").unwrap();
    assert_eq!(g.source(), "  ctx.a  ");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn compile_never_panics_on_arbitrary_text(s in any::<String>()) {
        let _ = Guard::compile(&s);
    }

    #[test]
    fn compile_never_panics_on_guard_like_text(
        s in "[ctxpayload.\\[\\]0-9a-z_ ()!&|=<>\"\\\\'eE+\\-é\u{a0}]{0,80}"
    ) {
        let _ = Guard::compile(&s);
    }

    #[test]
    fn compiled_guards_evaluate_on_any_context(
        s in "(!?\\(?ctx\\.[ab](\\[[0-2]\\])?( (==|!=|>|<|>=|<=) (1|-2\\.5|\"x\"|null|true))?\\)?( (&&|\\|\\|) )?){1,4}",
        a in prop_oneof![Just(json!(1)), Just(json!("x")), Just(json!([1, "x"])), Just(json!(null)), Just(json!({"b": 2}))],
    ) {
        if let Ok(g) = Guard::compile(&s) {
            let ctx = obj(json!({"a": a.clone(), "b": a}));
            let _ = g.evaluate(&ctx, &Map::new());
        }
    }
}
