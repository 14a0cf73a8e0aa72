//! Schema-only types for `GET /openapi.json`: what the derives cannot say on their own. Nothing
//! here takes part in handling a request; it describes, as strictly as JSON Schema can, what the
//! handlers accept and answer, so that a schema-valid request is accepted and a schema-invalid
//! one is refused (checked by `scripts/schemathesis.sh`).
//!
//! - Request bodies are one branch per group of currencies with the same minor units: the
//!   currency enum comes from [`Currency::parse`] itself, the amount pattern allows exactly that
//!   many fraction digits, > 0 (or >= 0 for an overdraft limit) and <= 10^15.
//! - Every error is an RFC 9457 problem document (`application/problem+json`) whose `status`,
//!   `code` and `type` are pinned per response.
//! - Every response carries `Cache-Control: no-store` and `X-Request-Id`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Value, json};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{AdditionalProperties, AllOfBuilder, AnyOfBuilder, SchemaType};
use utoipa::openapi::{
    ArrayBuilder, ContentBuilder, Header, HeaderBuilder, ObjectBuilder, OneOfBuilder, Ref, RefOr,
    Required, Response, ResponseBuilder, Schema, Type,
};
use utoipa::{IntoParams, PartialSchema, ToResponse, ToSchema};

use super::error::PROBLEM_JSON;
use super::holds::{CaptureBody, PlaceHoldBody, VoidBody};
use super::transactions::ReverseBody;
use super::wallets::{CreateWalletBody, EntryBody};
use crate::domain::Currency;
use crate::domain::metadata::{
    METADATA_CANONICAL_BYTES_MAX, METADATA_DEPTH_MAX, METADATA_MEMBERS_MAX,
    METADATA_NUMBER_DIGITS_MAX,
};

/// 1-255 printable ASCII characters. HTTP strips whitespace around a header value, so a key
/// cannot begin or end with a space on the wire.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~](?:[ -~]{0,253}[!-~])?$";

/// No control characters (Unicode Cc, what `char::is_control` refuses).
const NO_CONTROL_CHARACTERS: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";
/// No NUL character (Postgres `jsonb` cannot store one).
const NO_NUL: &str = r"^[^\u0000]*$";
/// 10^15, the largest amount (inclusive).
const AMOUNT_MAX: &str = "1000000000000000";

/// Every ISO 4217 code walletd accepts, grouped by minor units (0, 2, 3, 4): all 17,576
/// upper-case three-letter strings run through the same parser the handlers use.
fn currencies_by_minor_units() -> BTreeMap<u32, Vec<&'static str>> {
    let mut groups: BTreeMap<u32, Vec<&'static str>> = BTreeMap::new();
    for a in 'A'..='Z' {
        for b in 'A'..='Z' {
            for c in 'A'..='Z' {
                if let Ok(currency) = Currency::parse(&format!("{a}{b}{c}")) {
                    groups
                        .entry(currency.minor_units())
                        .or_default()
                        .push(currency.code());
                }
            }
        }
    }
    groups
}

/// A fraction of 1..=`digits` digits that is not all zeros.
fn non_zero_fraction(digits: usize) -> String {
    (0..digits)
        .map(|zeros| {
            let rest = digits - 1 - zeros;
            let tail = if rest == 0 {
                String::new()
            } else {
                format!("[0-9]{{0,{rest}}}")
            };
            format!("{}[1-9]{tail}", "0".repeat(zeros))
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// A decimal string > 0 and <= 10^15 with at most `digits` fraction digits (leading zeros are
/// allowed, as `Money::parse` allows them).
pub fn positive_amount_pattern(digits: u32) -> String {
    let d = digits as usize;
    if d == 0 {
        return format!("^0*(?:[1-9][0-9]{{0,14}}|{AMOUNT_MAX})$");
    }
    format!(
        r"^0*(?:[1-9][0-9]{{0,14}}(?:\.[0-9]{{1,{d}}})?|{AMOUNT_MAX}(?:\.0{{1,{d}}})?|0\.(?:{}))$",
        non_zero_fraction(d)
    )
}

/// A decimal string >= 0 and <= 10^15 with at most `digits` fraction digits.
pub fn non_negative_amount_pattern(digits: u32) -> String {
    let d = digits as usize;
    if d == 0 {
        return format!("^0*(?:[0-9]{{1,15}}|{AMOUNT_MAX})$");
    }
    format!(r"^0*(?:[0-9]{{1,15}}(?:\.[0-9]{{1,{d}}})?|{AMOUNT_MAX}(?:\.0{{1,{d}}})?)$")
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn nullable(schema_type: Type) -> SchemaType {
    SchemaType::from_iter([schema_type, Type::Null])
}

/// `owner_ref`, `reference`, `description`: optional text, 1..=`max` characters, no control
/// characters; `null` is the same as absent.
fn optional_text(max: usize, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String))
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(NO_CONTROL_CHARACTERS))
        .description(Some(description))
}

fn currency_enum(codes: &[&'static str]) -> ObjectBuilder {
    string()
        .enum_values(Some(codes.iter().copied()))
        .description(Some("ISO 4217 alpha-3, upper case"))
}

fn closed_object() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

/// A branch's title, unique in the document: generators name a class after it
/// (`EntryBody2MinorUnits`), and two branches of the same title in different schemas make
/// them drop both.
fn branch_title(schema: &str, digits: u32) -> String {
    format!("{schema} ({digits} minor units)")
}

fn example_for(digits: u32) -> &'static str {
    match digits {
        0 => "1250",
        2 => "12.50",
        3 => "12.500",
        _ => "12.5000",
    }
}

impl PartialSchema for EntryBody {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOfBuilder::new()
            .description(Some(
                "An amount in the wallet's currency. One branch per number of minor units: \
                 the amount is a decimal string > 0 and <= 10^15 with at most that many \
                 fraction digits. Unknown fields are refused.",
            ))
            .examples([json!({
                "amount": "12.50", "currency": "EUR", "reference": "booking-123",
                "description": "Booking payment", "metadata": {}
            })]);
        for (digits, codes) in currencies_by_minor_units() {
            let branch = closed_object()
                .title(Some(branch_title("EntryBody", digits)))
                .property(
                    "amount",
                    string()
                        .pattern(Some(positive_amount_pattern(digits)))
                        .examples([example_for(digits)]),
                )
                .required("amount")
                .property("currency", currency_enum(&codes))
                .required("currency")
                .property(
                    "reference",
                    optional_text(255, "The caller's reference, e.g. a booking id"),
                )
                .property("description", optional_text(1024, "Free text"))
                .property("metadata", metadata_or_null());
            one_of = one_of.item(branch);
        }
        RefOr::T(Schema::OneOf(one_of.build()))
    }
}

impl ToSchema for EntryBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("EntryBody")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("Metadata".into(), metadata_schema()));
        schemas.push(("MetadataNumber".into(), metadata_number_schema()));
        for level in METADATA_VALUE_LEVELS {
            schemas.push((metadata_value_name(level), metadata_value_schema(level)));
        }
    }
}

impl PartialSchema for PlaceHoldBody {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOfBuilder::new()
            .description(Some(
                "A hold in the wallet's currency. One branch per number of minor units: the \
                 amount is a decimal string > 0 and <= 10^15 with at most that many fraction \
                 digits; expires_in_seconds 1..=604800 (default 900). Unknown fields are refused.",
            ))
            .examples([json!({
                "amount": "30.00", "currency": "EUR", "reference": "booking-9",
                "expires_in_seconds": 900
            })]);
        for (digits, codes) in currencies_by_minor_units() {
            let branch = closed_object()
                .title(Some(branch_title("PlaceHoldBody", digits)))
                .property(
                    "amount",
                    string()
                        .pattern(Some(positive_amount_pattern(digits)))
                        .examples([example_for(digits)]),
                )
                .required("amount")
                .property("currency", currency_enum(&codes))
                .required("currency")
                .property(
                    "reference",
                    optional_text(255, "The caller's reference, e.g. a booking id"),
                )
                .property(
                    "expires_in_seconds",
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(604_800)),
                );
            one_of = one_of.item(branch);
        }
        RefOr::T(Schema::OneOf(one_of.build()))
    }
}

impl ToSchema for PlaceHoldBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PlaceHoldBody")
    }
}

/// An amount whose currency is the hold's or the entry's (at most 4 fraction digits here; more
/// than that currency has is 400). Optional, so `null` is the same as absent, as for every
/// optional member.
fn pending_amount(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String))
        .pattern(Some(positive_amount_pattern(4)))
        .description(Some(description.to_owned()))
}

impl PartialSchema for CaptureBody {
    fn schema() -> RefOr<Schema> {
        closed_object()
            .description(Some(
                "Capture the whole hold (`{}`) or part of it. Unknown fields are refused.",
            ))
            .property(
                "amount",
                pending_amount(
                    "At most the hold's amount, in the hold's currency; default the whole hold",
                ),
            )
            .examples([json!({"amount": "25.00"})])
            .into()
    }
}

impl ToSchema for CaptureBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("CaptureBody")
    }
}

impl PartialSchema for VoidBody {
    fn schema() -> RefOr<Schema> {
        closed_object()
            .description(Some("Always `{}`."))
            .examples([json!({})])
            .into()
    }
}

impl ToSchema for VoidBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("VoidBody")
    }
}

impl PartialSchema for ReverseBody {
    fn schema() -> RefOr<Schema> {
        closed_object()
            .description(Some(
                "Reverse all that is not yet reversed (`{}`) or part of it. Unknown fields are refused.",
            ))
            .property(
                "amount",
                pending_amount("In the original's currency; default all that is not yet reversed"),
            )
            .property("reason", optional_text(1024, "Why; recorded as the reversal's description"))
            .examples([json!({"amount": "5.00", "reason": "partial refund"})])
            .into()
    }
}

impl ToSchema for ReverseBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ReverseBody")
    }
}

/// The levels a metadata member can sit at (the metadata object itself is level 1): a value at
/// level 6 can only be a scalar, which is how the schema states "at most 5 levels".
const METADATA_VALUE_LEVELS: std::ops::RangeInclusive<usize> = 2..=METADATA_DEPTH_MAX + 1;

fn metadata_value_name(level: usize) -> String {
    format!("MetadataValueLevel{level}")
}

/// The `metadata` member of a request: the [`metadata_schema`] object, or `null` (the same as
/// absent). Said with `anyOf` rather than a type list, so that the object stays a plain
/// `type: object` that generators turn into a model.
fn metadata_or_null() -> Schema {
    Schema::AnyOf(
        AnyOfBuilder::new()
            .item(Ref::from_schema_name("Metadata"))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some("Optional, default `{}`; `null` is the same as absent"))
            .build(),
    )
}

/// `metadata`: a JSON object, bounded as API.md states.
fn metadata_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(METADATA_MEMBERS_MAX))
        .property_names(Some(string().pattern(Some(NO_NUL))))
        .additional_properties(Some(Ref::from_schema_name(metadata_value_name(2))))
        .description(Some(format!(
            "A JSON object of at most {METADATA_MEMBERS_MAX} members and {METADATA_DEPTH_MAX} \
             levels (this object is level 1; arrays count), at most \
             {METADATA_CANONICAL_BYTES_MAX} bytes in RFC 8785 form, no NUL characters. \
             Numbers: finite, at most {METADATA_NUMBER_DIGITS_MAX} significant digits, 0 or \
             10^-6 <= |x| < 10^15; stored and returned in RFC 8785 form."
        )))
        .into()
}

/// 0, or 10^-6 <= |x| < 10^15 (the 15-significant-digit rule has no JSON Schema keyword).
fn metadata_number_schema() -> RefOr<Schema> {
    let number = || ObjectBuilder::new().schema_type(Type::Number);
    let any_of = AnyOfBuilder::new()
        .item(number().enum_values(Some([0])))
        .item(
            number()
                .minimum(Some(0.000_001))
                .exclusive_maximum(Some(1e15)),
        )
        .item(
            number()
                .maximum(Some(-0.000_001))
                .exclusive_minimum(Some(-1e15)),
        );
    RefOr::T(Schema::AnyOf(any_of.build()))
}

/// A metadata value at `level`: a scalar, or (up to level 5) an array or object of values one
/// level deeper.
fn metadata_value_schema(level: usize) -> RefOr<Schema> {
    let mut any_of = AnyOfBuilder::new()
        .item(string().pattern(Some(NO_NUL)))
        .item(Ref::from_schema_name("MetadataNumber"))
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(ObjectBuilder::new().schema_type(Type::Null));
    if level <= METADATA_DEPTH_MAX {
        let deeper = || Ref::from_schema_name(metadata_value_name(level + 1));
        any_of = any_of.item(ArrayBuilder::new().items(deeper())).item(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property_names(Some(string().pattern(Some(NO_NUL))))
                .additional_properties(Some(deeper())),
        );
    }
    RefOr::T(Schema::AnyOf(any_of.build()))
}

impl PartialSchema for CreateWalletBody {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOfBuilder::new()
            .description(Some(
                "A new wallet. One branch per number of minor units: `overdraft_limit` is a \
                 decimal string >= 0 and <= 10^15 with at most that many fraction digits \
                 (default 0). Unknown fields are refused.",
            ))
            .examples([
                json!({"currency": "EUR", "owner_ref": "user-42", "overdraft_limit": "0.00"}),
            ]);
        for (digits, codes) in currencies_by_minor_units() {
            let branch = closed_object()
                .title(Some(branch_title("CreateWalletBody", digits)))
                .property("currency", currency_enum(&codes))
                .required("currency")
                .property(
                    "owner_ref",
                    optional_text(255, "The caller's reference for the owner"),
                )
                .property(
                    "overdraft_limit",
                    ObjectBuilder::new()
                        .schema_type(nullable(Type::String))
                        .pattern(Some(non_negative_amount_pattern(digits)))
                        .description(Some("How far below 0 the balance may go; default 0")),
                );
            one_of = one_of.item(branch);
        }
        RefOr::T(Schema::OneOf(one_of.build()))
    }
}

impl ToSchema for CreateWalletBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("CreateWalletBody")
    }
}

/// The `Idempotency-Key` request header of every mutating POST.
pub struct IdempotencyKeyHeader;

impl IntoParams for IdempotencyKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::True)
                .description(Some(
                    "1-255 printable ASCII characters, scoped to the tenant. Missing: 400 \
                     idempotency_key_missing; malformed: 400 idempotency_key_invalid. A repeat \
                     with the same request replays the stored answer.",
                ))
                .schema(Some(
                    string()
                        .min_length(Some(1))
                        .max_length(Some(255))
                        .pattern(Some(IDEMPOTENCY_KEY_PATTERN)),
                ))
                .build(),
        ]
    }
}

/// `status` of a wallet.
/// The RFC 9457 problem document every error answers with.
pub struct Problem;

impl PartialSchema for Problem {
    fn schema() -> RefOr<Schema> {
        closed_object()
            .description(Some(
                "RFC 9457 problem document; `code` is stable and machine-readable",
            ))
            .property(
                "type",
                string().pattern(Some("^urn:walletd:problem:[a-z_]+$")),
            )
            .required("type")
            .property("title", string())
            .required("title")
            .property(
                "status",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(400))
                    .maximum(Some(599)),
            )
            .required("status")
            .property("detail", string())
            .required("detail")
            .property("code", string().pattern(Some("^[a-z_]+$")))
            .required("code")
            .into()
    }
}

impl ToSchema for Problem {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Problem")
    }
}

fn header(schema: ObjectBuilder, description: &str) -> Header {
    HeaderBuilder::new()
        .schema(schema)
        .description(Some(description))
        .build()
}

fn retry_after() -> (&'static str, Header) {
    (
        "Retry-After",
        header(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
            "Seconds to wait before retrying with the same Idempotency-Key",
        ),
    )
}

/// `Idempotent-Replayed: true` marks an answer replayed from the idempotency store.
pub fn idempotent_replayed() -> (&'static str, Header) {
    (
        IDEMPOTENT_REPLAYED,
        header(
            string().enum_values(Some(["true"])),
            "Present (`true`) when this is the stored answer to an earlier request with the \
             same Idempotency-Key",
        ),
    )
}

/// The value of `Idempotent-Replayed`.
pub struct ReplayedFlag;

impl PartialSchema for ReplayedFlag {
    fn schema() -> RefOr<Schema> {
        string().enum_values(Some(["true"])).into()
    }
}

impl ToSchema for ReplayedFlag {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ReplayedFlag")
    }
}

/// Headers that only some answers carry; every other documented header is required.
pub const OPTIONAL_HEADERS: [&str; 1] = [IDEMPOTENT_REPLAYED];
const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// `insufficient_funds` as a title for an example: `Insufficient funds`.
fn title_of(code: &str) -> String {
    let words = code.replace('_', " ");
    let mut chars = words.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// A problem response with its status and the codes it may carry, and an example of the first.
fn problem(
    status: u16,
    codes: &[&str],
    description: &str,
    headers: Vec<(&'static str, Header)>,
) -> RefOr<Response> {
    let pinned = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([status])),
        )
        .property("code", string().enum_values(Some(codes.iter().copied())))
        .property(
            "type",
            string().enum_values(Some(
                codes
                    .iter()
                    .map(|code| format!("urn:walletd:problem:{code}")),
            )),
        );
    let schema = Schema::AllOf(
        AllOfBuilder::new()
            .item(Ref::from_schema_name("Problem"))
            .item(pinned)
            .build(),
    );
    let code = codes[0];
    let example = json!({
        "type": format!("urn:walletd:problem:{code}"),
        "title": title_of(code),
        "status": status,
        "detail": description,
        "code": code,
    });
    let mut response = ResponseBuilder::new()
        .description(format!("{description} (`{}`)", codes.join("`, `")))
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(schema))
                .example(Some(example))
                .build(),
        );
    for (name, value) in headers {
        response = response.header(name, value);
    }
    response.build().into()
}

macro_rules! problem_responses {
    ($($name:ident: $status:literal, [$($code:literal),+], $description:literal, [$($header:expr),*];)+) => {$(
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (
                    stringify!($name),
                    problem($status, &[$($code),+], $description, vec![$($header),*]),
                )
            }
        }
    )+};
}

problem_responses! {
    BadEntryRequest: 400,
        ["validation_failed", "idempotency_key_missing", "idempotency_key_invalid"],
        "Malformed JSON, an unknown field, a bad amount or currency, or a missing or malformed Idempotency-Key; nothing is stored",
        [];
    BadQuery: 400, ["validation_failed"], "A bad query parameter", [];
    Unauthorized: 401, ["unauthorized"], "No, unknown or revoked API key",
        [("WWW-Authenticate", header(string().enum_values(Some(["Bearer"])), "Always `Bearer`"))];
    Forbidden: 403, ["forbidden"], "The API key lacks the route's scope", [];
    WalletNotFound: 404, ["wallet_not_found"],
        "No such wallet for this tenant (also another tenant's wallet, or an id that is not a UUID)",
        [idempotent_replayed()];
    TransactionNotFound: 404, ["transaction_not_found"],
        "No such transaction for this tenant (also an id that is not a UUID)", [];
    ReverseNotFound: 404, ["transaction_not_found"],
        "No such transaction for this tenant (also an id that is not a UUID)",
        [idempotent_replayed()];
    HoldNotFound: 404, ["hold_not_found"],
        "No such hold for this tenant (also an id that is not a UUID)", [idempotent_replayed()];
    PlaceHoldDeclined: 422,
        ["insufficient_funds", "currency_mismatch", "wallet_closed", "idempotency_key_reused"],
        "Declined; a decline other than idempotency_key_reused is stored and replayed",
        [idempotent_replayed()];
    CaptureDeclined: 422,
        ["hold_expired", "hold_not_active", "capture_exceeds_hold", "idempotency_key_reused"],
        "Declined; a decline other than idempotency_key_reused is stored and replayed",
        [idempotent_replayed()];
    VoidDeclined: 422, ["hold_not_active", "idempotency_key_reused"],
        "Declined; a decline other than idempotency_key_reused is stored and replayed",
        [idempotent_replayed()];
    ReverseDeclined: 422,
        ["reversal_exceeds_original", "not_reversible", "insufficient_funds", "idempotency_key_reused"],
        "Declined; a decline other than idempotency_key_reused is stored and replayed",
        [idempotent_replayed()];
    IdempotencyKeyInProgress: 409, ["idempotency_key_in_progress"],
        "A request with this Idempotency-Key is still executing; nothing changed", [retry_after()];
    RequestTimeout: 408, ["request_timeout"],
        "The body did not arrive within server.body_read_timeout_ms; nothing is stored, retry with the same Idempotency-Key",
        [retry_after()];
    IdempotencyKeyExpired: 410, ["idempotency_key_expired"],
        "This Idempotency-Key's stored answer is past retention; the key is never reused, nothing executes",
        [];
    PayloadTooLarge: 413, ["payload_too_large"], "The body is over 65,536 bytes", [];
    UnsupportedMediaType: 415, ["unsupported_media_type"],
        "The body is not `application/json`", [];
    DebitDeclined: 422,
        ["insufficient_funds", "currency_mismatch", "wallet_closed", "idempotency_key_reused"],
        "Declined; a decline other than idempotency_key_reused is stored and replayed",
        [idempotent_replayed()];
    CreditDeclined: 422, ["currency_mismatch", "wallet_closed", "idempotency_key_reused"],
        "Declined; a decline other than idempotency_key_reused is stored and replayed",
        [idempotent_replayed()];
    IdempotencyKeyReused: 422, ["idempotency_key_reused"],
        "This Idempotency-Key was used for a different request; nothing changed", [];
    RateLimited: 429, ["rate_limited"], "Per-key rate limit exceeded", [retry_after()];
    Unavailable: 503, ["lock_timeout", "unavailable"],
        "The wallet is busy or a dependency is down; retry with the same Idempotency-Key",
        [retry_after()];
}

/// `Cache-Control: no-store` and `X-Request-Id`, on every response.
pub fn add_common_headers(response: &mut Response) {
    response.headers.insert(
        "Cache-Control".into(),
        header(
            string().enum_values(Some(["no-store"])),
            "Always `no-store`",
        ),
    );
    response.headers.insert(
        "X-Request-Id".into(),
        header(
            string().pattern(Some("^[!-~]{1,200}$")),
            "The request's X-Request-Id when it sent a sane one (1-200 visible ASCII \
             characters), else a generated UUID",
        ),
    );
}

/// What the typed model cannot express, fixed on the rendered document, in every response (of
/// every operation and in `components.responses`):
/// - OpenAPI headers are optional unless marked, and utoipa's `Header` has no `required`: every
///   documented response header is marked required except [`OPTIONAL_HEADERS`];
/// - utoipa 5.5 serialises a Link's fields in snake case (`operation_id`, `request_body`); the
///   specification spells them `operationId`, `operationRef`, `requestBody`.
pub fn finish_document(doc: &mut Value) {
    fn finish_response(response: &mut Value) {
        if let Some(headers) = response.get_mut("headers").and_then(Value::as_object_mut) {
            for (name, header) in headers.iter_mut() {
                if let Some(header) = header.as_object_mut()
                    && !OPTIONAL_HEADERS.contains(&name.as_str())
                {
                    header.insert("required".into(), Value::Bool(true));
                }
            }
        }
        if let Some(links) = response.get_mut("links").and_then(Value::as_object_mut) {
            for link in links.values_mut().filter_map(Value::as_object_mut) {
                for (snake, camel) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(value) = link.remove(snake) {
                        link.insert(camel.into(), value);
                    }
                }
            }
        }
    }
    fn finish_responses(responses: &mut Value) {
        if let Some(responses) = responses.as_object_mut() {
            responses.values_mut().for_each(finish_response);
        }
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for operation in item.values_mut() {
                if let Some(responses) = operation.get_mut("responses") {
                    finish_responses(responses);
                }
            }
        }
    }
    if let Some(responses) = doc.pointer_mut("/components/responses") {
        finish_responses(responses);
    }
}

/// The examples shown with each operation (request bodies, answers), one consistent story: a
/// EUR wallet credited 100.00, debited 12.50, a hold of 30.00 captured for 25.00, the debit
/// partly reversed. `scripts/openapi_check.sh` checks every example against its schema.
pub mod examples {
    use serde_json::{Value, json};

    pub const WALLET_ID: &str = "01936f3e-8d6a-7c4e-9a51-3f2b8c1d0e7a";
    pub const CREDIT_ID: &str = "01936f3e-9a10-7b2c-8d3e-4f5a6b7c8d9e";
    pub const DEBIT_ID: &str = "01936f3e-a2b4-7c6d-9e8f-0a1b2c3d4e5f";
    pub const HOLD_ID: &str = "01936f3e-b1c2-7d3e-8f4a-5b6c7d8e9f0a";
    const CAPTURE_ID: &str = "01936f3e-c3d4-7e5f-a061-7b8c9d0e1f2a";
    const REVERSAL_ID: &str = "01936f3e-d4e5-7f60-b172-8c9d0e1f2a3b";
    const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    const HASH_1: &str = "3b7e2c9f1a4d6e8b0c2f4a6d8e0b2c4f6a8d0e2b4c6f8a0d2e4b6c8f0a2d4e6b";
    const HASH_2: &str = "9f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a";
    const HASH_3: &str = "5c8e1a3f5b7d9c1e3a5f7b9d1c3e5a7f9b1d3c5e7a9f1b3d5c7e9a1f3b5d7c9e";
    const HASH_4: &str = "d1f3b5a7c9e1d3f5b7a9c1e3d5f7b9a1c3e5d7f9b1a3c5e7d9f1b3a5c7e9d1f3";

    pub fn create_wallet_body() -> Value {
        json!({"currency": "EUR", "owner_ref": "user-42", "overdraft_limit": "0.00"})
    }

    pub fn wallet() -> Value {
        json!({
            "id": WALLET_ID, "currency": "EUR", "owner_ref": "user-42",
            "balance": "87.50", "held": "0.00", "available": "87.50", "overdraft_limit": "0.00",
            "version": 3, "status": "active",
            "created_at": "2026-12-03T10:15:00.000000Z", "updated_at": "2026-12-03T10:16:30.250000Z"
        })
    }

    pub fn credit_body() -> Value {
        json!({"amount": "100.00", "currency": "EUR", "reference": "topup-1"})
    }

    pub fn debit_body() -> Value {
        json!({
            "amount": "12.50", "currency": "EUR", "reference": "booking-123",
            "description": "Booking payment", "metadata": {"booking": {"nights": 2}}
        })
    }

    fn entry(fields: Value) -> Value {
        let mut base = json!({
            "wallet_id": WALLET_ID, "currency": "EUR", "reference": null, "description": null,
            "metadata": {}, "hold_id": null, "reverses": null
        });
        if let (Some(base), Value::Object(fields)) = (base.as_object_mut(), fields) {
            base.extend(fields);
        }
        base
    }

    pub fn credit() -> Value {
        entry(json!({
            "id": CREDIT_ID, "type": "credit", "amount": "100.00",
            "balance_before": "0.00", "balance_after": "100.00", "seq": 1,
            "reference": "topup-1", "idempotency_key": "topup-1",
            "created_at": "2026-12-03T10:15:10.000000Z", "prev_hash": GENESIS, "hash": HASH_1
        }))
    }

    pub fn debit() -> Value {
        entry(json!({
            "id": DEBIT_ID, "type": "debit", "amount": "12.50",
            "balance_before": "100.00", "balance_after": "87.50", "seq": 2,
            "reference": "booking-123", "description": "Booking payment",
            "metadata": {"booking": {"nights": 2}}, "idempotency_key": "booking-123",
            "created_at": "2026-12-03T10:16:30.250000Z", "prev_hash": HASH_1, "hash": HASH_2
        }))
    }

    pub fn ledger_page() -> Value {
        json!({"entries": [credit(), debit()], "next_cursor": "2"})
    }

    pub fn place_hold_body() -> Value {
        json!({"amount": "30.00", "currency": "EUR", "reference": "booking-9", "expires_in_seconds": 900})
    }

    pub fn hold() -> Value {
        json!({
            "id": HOLD_ID, "wallet_id": WALLET_ID, "amount": "30.00", "currency": "EUR",
            "status": "active", "captured_amount": "0.00", "reference": "booking-9",
            "expires_at": "2026-12-03T10:32:00.000000Z",
            "created_at": "2026-12-03T10:17:00.000000Z", "updated_at": "2026-12-03T10:17:00.000000Z"
        })
    }

    pub fn voided_hold() -> Value {
        let mut hold = hold();
        hold["status"] = json!("voided");
        hold["updated_at"] = json!("2026-12-03T10:20:00.000000Z");
        hold
    }

    pub fn capture_body() -> Value {
        json!({"amount": "25.00"})
    }

    pub fn capture() -> Value {
        entry(json!({
            "id": CAPTURE_ID, "type": "debit", "amount": "25.00",
            "balance_before": "87.50", "balance_after": "62.50", "seq": 3,
            "reference": "booking-9", "idempotency_key": "capture-9", "hold_id": HOLD_ID,
            "created_at": "2026-12-03T10:25:00.000000Z", "prev_hash": HASH_2, "hash": HASH_3
        }))
    }

    pub fn reverse_body() -> Value {
        json!({"amount": "5.00", "reason": "partial refund"})
    }

    pub fn reversal() -> Value {
        entry(json!({
            "id": REVERSAL_ID, "type": "reversal", "amount": "5.00",
            "balance_before": "62.50", "balance_after": "67.50", "seq": 4,
            "description": "partial refund", "idempotency_key": "refund-123-1",
            "reverses": DEBIT_ID,
            "created_at": "2026-12-03T10:40:00.000000Z", "prev_hash": HASH_3, "hash": HASH_4
        }))
    }

    pub fn audit() -> Value {
        json!({
            "wallet_id": WALLET_ID, "entries": 4, "balance": "67.50", "ledger_sum": "67.50",
            "chain_ok": true, "first_bad_seq": null, "checked_at": "2026-12-03T11:00:00.000000Z"
        })
    }

    pub fn balance() -> Value {
        json!({
            "wallet_id": WALLET_ID, "as_of": "2026-12-03T10:20:00.000000Z",
            "balance": "87.50", "seq": 2
        })
    }

    pub fn export_jsonl() -> String {
        [credit(), debit()]
            .iter()
            .map(|entry| format!("{entry}\n"))
            .collect()
    }

    pub fn health() -> Value {
        json!({"status": "ok"})
    }

    pub fn readiness() -> Value {
        json!({
            "status": "ready", "postgres": "up",
            "redis": [{"node": "127.0.0.1:6379", "status": "up"}]
        })
    }

    pub const METRICS: &str = "# HELP walletd_http_requests_total HTTP requests by route \
        pattern, method and status\n\
        # TYPE walletd_http_requests_total counter\n\
        walletd_http_requests_total{method=\"POST\",route=\"/v1/wallets/{id}/debit\",status=\"201\"} 42\n";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_groups_match_the_contract() {
        let groups = currencies_by_minor_units();
        assert_eq!(groups.keys().copied().collect::<Vec<_>>(), [0, 2, 3, 4]);
        for (code, digits) in [
            ("EUR", 2),
            ("USD", 2),
            ("GBP", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("KWD", 3),
            ("BHD", 3),
            ("JOD", 3),
        ] {
            assert!(groups[&digits].contains(&code), "{code}");
        }
        let all: Vec<_> = groups.values().flatten().collect();
        for code in ["XAU", "XDR", "XXX"] {
            assert!(!all.contains(&&code), "{code}");
        }
    }

    #[test]
    fn the_document_is_finished() {
        let mut doc = json!({
            "paths": {"/a": {"post": {"responses": {"201": {
                "headers": {"X-Request-Id": {}, "Idempotent-Replayed": {}},
                "links": {"Next": {"operation_id": "b", "request_body": {"k": 1}}}
            }}}}},
            "components": {"responses": {"Busy": {"headers": {"Retry-After": {}}}}}
        });
        finish_document(&mut doc);
        let response = &doc["paths"]["/a"]["post"]["responses"]["201"];
        assert_eq!(response["headers"]["X-Request-Id"]["required"], true);
        assert!(
            response["headers"]["Idempotent-Replayed"]
                .get("required")
                .is_none()
        );
        assert_eq!(
            response["links"]["Next"],
            json!({"operationId": "b", "requestBody": {"k": 1}})
        );
        assert_eq!(
            doc["components"]["responses"]["Busy"]["headers"]["Retry-After"]["required"],
            true
        );
    }

    #[test]
    fn amount_patterns() {
        assert_eq!(
            positive_amount_pattern(0),
            "^0*(?:[1-9][0-9]{0,14}|1000000000000000)$"
        );
        assert_eq!(
            positive_amount_pattern(2),
            r"^0*(?:[1-9][0-9]{0,14}(?:\.[0-9]{1,2})?|1000000000000000(?:\.0{1,2})?|0\.(?:[1-9][0-9]{0,1}|0[1-9]))$"
        );
        assert_eq!(
            non_negative_amount_pattern(3),
            r"^0*(?:[0-9]{1,15}(?:\.[0-9]{1,3})?|1000000000000000(?:\.0{1,3})?)$"
        );
    }
}
