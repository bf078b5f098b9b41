//! etcd's HTTP/JSON gateway (grpc-gateway's mapping, as etcd serves it on the
//! client port): `POST /v3/<service>/<method>` with a JSON request object, a
//! JSON response object.
//!
//! The gateway implements no RPC. It translates: the JSON body becomes the
//! request message (through the descriptor set of `proto/`, with
//! `prost-reflect`'s proto3 JSON mapping), the message is framed as a gRPC
//! request and handed in-process to the same router the gRPC clients reach,
//! behind the same authorization layer (the `Authorization` header is the
//! token, the connection's client certificate the identity) and the same
//! message-size limit; the gRPC response is translated back. So every rule of
//! the gRPC API holds for the gateway by construction.
//!
//! The JSON mapping is the one etcd's gateway uses (`OrigName`): field names as
//! in the `.proto`, bytes as base64, 64-bit integers as strings, enums by name,
//! default values omitted, unknown fields ignored. Errors are grpc-gateway's
//! object, `{"error":..,"message":..,"code":..}`, with its HTTP status for
//! the gRPC code. The streaming methods (`/v3/watch`, `/v3/lease/keepalive`,
//! `/v3/maintenance/snapshot`, `/v3/election/observe`) answer newline-delimited `{"result":..}`
//! objects; watch and keepalive read a stream of request objects.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::LazyLock;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::StreamExt;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use tonic::Code;

/// The descriptor set of `proto/` (made by `proto/regen` with protoc).
static DESCRIPTORS: &[u8] = include_bytes!("../pb/descriptor.bin");

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(DESCRIPTORS).expect("the checked-in descriptor set decodes")
});

/// How a method's messages flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Unary,
    /// One request object, a stream of result objects (Snapshot, Observe).
    ServerStream,
    /// A stream of request objects, a stream of result objects.
    Bidi,
}

/// One path of the gateway.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The path after `/v3/`.
    pub path: &'static str,
    /// The gRPC method it calls.
    pub method: &'static str,
    pub request: &'static str,
    pub response: &'static str,
    pub flow: Flow,
}

const fn r(
    path: &'static str,
    method: &'static str,
    request: &'static str,
    response: &'static str,
    flow: Flow,
) -> Route {
    Route {
        path,
        method,
        request,
        response,
        flow,
    }
}

use Flow::{Bidi, ServerStream, Unary};

/// Every path of etcd's gateway (etcd 3.5's bindings, the Lock and Election
/// services' among them; etcd 3.4's `/v3/kv/lease/...` aliases of the lease
/// methods too).
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    r("kv/range", "/etcdserverpb.KV/Range", "etcdserverpb.RangeRequest", "etcdserverpb.RangeResponse", Unary),
    r("kv/put", "/etcdserverpb.KV/Put", "etcdserverpb.PutRequest", "etcdserverpb.PutResponse", Unary),
    r("kv/deleterange", "/etcdserverpb.KV/DeleteRange", "etcdserverpb.DeleteRangeRequest", "etcdserverpb.DeleteRangeResponse", Unary),
    r("kv/txn", "/etcdserverpb.KV/Txn", "etcdserverpb.TxnRequest", "etcdserverpb.TxnResponse", Unary),
    r("kv/compaction", "/etcdserverpb.KV/Compact", "etcdserverpb.CompactionRequest", "etcdserverpb.CompactionResponse", Unary),
    r("watch", "/etcdserverpb.Watch/Watch", "etcdserverpb.WatchRequest", "etcdserverpb.WatchResponse", Bidi),
    r("lease/grant", "/etcdserverpb.Lease/LeaseGrant", "etcdserverpb.LeaseGrantRequest", "etcdserverpb.LeaseGrantResponse", Unary),
    r("lease/revoke", "/etcdserverpb.Lease/LeaseRevoke", "etcdserverpb.LeaseRevokeRequest", "etcdserverpb.LeaseRevokeResponse", Unary),
    r("kv/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke", "etcdserverpb.LeaseRevokeRequest", "etcdserverpb.LeaseRevokeResponse", Unary),
    r("lease/keepalive", "/etcdserverpb.Lease/LeaseKeepAlive", "etcdserverpb.LeaseKeepAliveRequest", "etcdserverpb.LeaseKeepAliveResponse", Bidi),
    r("lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive", "etcdserverpb.LeaseTimeToLiveRequest", "etcdserverpb.LeaseTimeToLiveResponse", Unary),
    r("kv/lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive", "etcdserverpb.LeaseTimeToLiveRequest", "etcdserverpb.LeaseTimeToLiveResponse", Unary),
    r("lease/leases", "/etcdserverpb.Lease/LeaseLeases", "etcdserverpb.LeaseLeasesRequest", "etcdserverpb.LeaseLeasesResponse", Unary),
    r("kv/lease/leases", "/etcdserverpb.Lease/LeaseLeases", "etcdserverpb.LeaseLeasesRequest", "etcdserverpb.LeaseLeasesResponse", Unary),
    r("cluster/member/add", "/etcdserverpb.Cluster/MemberAdd", "etcdserverpb.MemberAddRequest", "etcdserverpb.MemberAddResponse", Unary),
    r("cluster/member/remove", "/etcdserverpb.Cluster/MemberRemove", "etcdserverpb.MemberRemoveRequest", "etcdserverpb.MemberRemoveResponse", Unary),
    r("cluster/member/update", "/etcdserverpb.Cluster/MemberUpdate", "etcdserverpb.MemberUpdateRequest", "etcdserverpb.MemberUpdateResponse", Unary),
    r("cluster/member/list", "/etcdserverpb.Cluster/MemberList", "etcdserverpb.MemberListRequest", "etcdserverpb.MemberListResponse", Unary),
    r("cluster/member/promote", "/etcdserverpb.Cluster/MemberPromote", "etcdserverpb.MemberPromoteRequest", "etcdserverpb.MemberPromoteResponse", Unary),
    r("maintenance/alarm", "/etcdserverpb.Maintenance/Alarm", "etcdserverpb.AlarmRequest", "etcdserverpb.AlarmResponse", Unary),
    r("maintenance/status", "/etcdserverpb.Maintenance/Status", "etcdserverpb.StatusRequest", "etcdserverpb.StatusResponse", Unary),
    r("maintenance/defragment", "/etcdserverpb.Maintenance/Defragment", "etcdserverpb.DefragmentRequest", "etcdserverpb.DefragmentResponse", Unary),
    r("maintenance/hash", "/etcdserverpb.Maintenance/Hash", "etcdserverpb.HashRequest", "etcdserverpb.HashResponse", Unary),
    r("maintenance/hashkv", "/etcdserverpb.Maintenance/HashKV", "etcdserverpb.HashKVRequest", "etcdserverpb.HashKVResponse", Unary),
    r("maintenance/snapshot", "/etcdserverpb.Maintenance/Snapshot", "etcdserverpb.SnapshotRequest", "etcdserverpb.SnapshotResponse", ServerStream),
    r("maintenance/transfer-leadership", "/etcdserverpb.Maintenance/MoveLeader", "etcdserverpb.MoveLeaderRequest", "etcdserverpb.MoveLeaderResponse", Unary),
    r("maintenance/downgrade", "/etcdserverpb.Maintenance/Downgrade", "etcdserverpb.DowngradeRequest", "etcdserverpb.DowngradeResponse", Unary),
    r("auth/enable", "/etcdserverpb.Auth/AuthEnable", "etcdserverpb.AuthEnableRequest", "etcdserverpb.AuthEnableResponse", Unary),
    r("auth/disable", "/etcdserverpb.Auth/AuthDisable", "etcdserverpb.AuthDisableRequest", "etcdserverpb.AuthDisableResponse", Unary),
    r("auth/status", "/etcdserverpb.Auth/AuthStatus", "etcdserverpb.AuthStatusRequest", "etcdserverpb.AuthStatusResponse", Unary),
    r("auth/authenticate", "/etcdserverpb.Auth/Authenticate", "etcdserverpb.AuthenticateRequest", "etcdserverpb.AuthenticateResponse", Unary),
    r("auth/user/add", "/etcdserverpb.Auth/UserAdd", "etcdserverpb.AuthUserAddRequest", "etcdserverpb.AuthUserAddResponse", Unary),
    r("auth/user/get", "/etcdserverpb.Auth/UserGet", "etcdserverpb.AuthUserGetRequest", "etcdserverpb.AuthUserGetResponse", Unary),
    r("auth/user/list", "/etcdserverpb.Auth/UserList", "etcdserverpb.AuthUserListRequest", "etcdserverpb.AuthUserListResponse", Unary),
    r("auth/user/delete", "/etcdserverpb.Auth/UserDelete", "etcdserverpb.AuthUserDeleteRequest", "etcdserverpb.AuthUserDeleteResponse", Unary),
    r("auth/user/changepw", "/etcdserverpb.Auth/UserChangePassword", "etcdserverpb.AuthUserChangePasswordRequest", "etcdserverpb.AuthUserChangePasswordResponse", Unary),
    r("auth/user/grant", "/etcdserverpb.Auth/UserGrantRole", "etcdserverpb.AuthUserGrantRoleRequest", "etcdserverpb.AuthUserGrantRoleResponse", Unary),
    r("auth/user/revoke", "/etcdserverpb.Auth/UserRevokeRole", "etcdserverpb.AuthUserRevokeRoleRequest", "etcdserverpb.AuthUserRevokeRoleResponse", Unary),
    r("auth/role/add", "/etcdserverpb.Auth/RoleAdd", "etcdserverpb.AuthRoleAddRequest", "etcdserverpb.AuthRoleAddResponse", Unary),
    r("auth/role/get", "/etcdserverpb.Auth/RoleGet", "etcdserverpb.AuthRoleGetRequest", "etcdserverpb.AuthRoleGetResponse", Unary),
    r("auth/role/list", "/etcdserverpb.Auth/RoleList", "etcdserverpb.AuthRoleListRequest", "etcdserverpb.AuthRoleListResponse", Unary),
    r("auth/role/delete", "/etcdserverpb.Auth/RoleDelete", "etcdserverpb.AuthRoleDeleteRequest", "etcdserverpb.AuthRoleDeleteResponse", Unary),
    r("auth/role/grant", "/etcdserverpb.Auth/RoleGrantPermission", "etcdserverpb.AuthRoleGrantPermissionRequest", "etcdserverpb.AuthRoleGrantPermissionResponse", Unary),
    r("auth/role/revoke", "/etcdserverpb.Auth/RoleRevokePermission", "etcdserverpb.AuthRoleRevokePermissionRequest", "etcdserverpb.AuthRoleRevokePermissionResponse", Unary),
    r("lock/lock", "/v3lockpb.Lock/Lock", "v3lockpb.LockRequest", "v3lockpb.LockResponse", Unary),
    r("lock/unlock", "/v3lockpb.Lock/Unlock", "v3lockpb.UnlockRequest", "v3lockpb.UnlockResponse", Unary),
    r("election/campaign", "/v3electionpb.Election/Campaign", "v3electionpb.CampaignRequest", "v3electionpb.CampaignResponse", Unary),
    r("election/proclaim", "/v3electionpb.Election/Proclaim", "v3electionpb.ProclaimRequest", "v3electionpb.ProclaimResponse", Unary),
    r("election/leader", "/v3electionpb.Election/Leader", "v3electionpb.LeaderRequest", "v3electionpb.LeaderResponse", Unary),
    r("election/observe", "/v3electionpb.Election/Observe", "v3electionpb.LeaderRequest", "v3electionpb.LeaderResponse", ServerStream),
    r("election/resign", "/v3electionpb.Election/Resign", "v3electionpb.ResignRequest", "v3electionpb.ResignResponse", Unary),
];

/// The route for a request path (`/v3/...`, or `/v3beta/...` as etcd's alias).
pub fn route(path: &str) -> Option<&'static Route> {
    let rest = path
        .strip_prefix("/v3/")
        .or_else(|| path.strip_prefix("/v3beta/"))?;
    ROUTES.iter().find(|r| r.path == rest)
}

fn descriptor(name: &str) -> MessageDescriptor {
    POOL.get_message_by_name(name)
        .expect("every message the route table names is in the descriptor set")
}

/// What the gateway's handlers share: the gRPC router (behind the
/// authorization and message-size layers) and the request limit.
#[derive(Clone)]
struct Gateway {
    grpc: axum::Router,
    /// The gRPC message limit (`--max-request-bytes` plus gRPC's allowance).
    max: usize,
}

impl Gateway {
    /// The most JSON a request body may hold: a message at the limit, its
    /// bytes in base64 and JSON's quoting, with room to spare. Beyond, the
    /// request is refused as gRPC refuses a message over the limit.
    fn body_limit(&self) -> usize {
        self.max.saturating_mul(3).saturating_add(64 * 1024)
    }
}

/// The gateway's routes; `grpc` is the router gRPC clients reach.
pub fn router(grpc: axum::Router, max: usize) -> axum::Router {
    axum::Router::new()
        .route("/v3/{*rest}", any(handle))
        .route("/v3beta/{*rest}", any(handle))
        .with_state(Gateway { grpc, max })
}

async fn handle(State(g): State<Gateway>, req: Request) -> Response {
    let Some(route) = route(req.uri().path()) else {
        // grpc-gateway's answer for a path it has no binding for.
        return plain(StatusCode::NOT_FOUND, "Not Found\n");
    };
    if req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    match route.flow {
        Flow::Unary => unary(&g, route, req).await,
        Flow::ServerStream => server_stream(&g, route, req).await,
        Flow::Bidi => bidi(&g, route, req).await,
    }
}

fn plain(code: StatusCode, text: &'static str) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}

/// grpc-gateway's HTTP status for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON string as Go's encoder writes it (`<`, `>`, `&`, U+2028 and
/// U+2029 escaped).
fn go_string(s: &str) -> String {
    go_escape(serde_json::Value::String(s.to_string()).to_string())
}

/// Go's HTML-safe escaping applied to JSON text (those characters only occur
/// inside strings, so the text stays valid).
fn go_escape(json: String) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// grpc-gateway's error object.
pub fn error_body(code: Code, message: &str) -> String {
    let m = go_string(message);
    format!(r#"{{"error":{m},"message":{m},"code":{}}}"#, code as i32)
}

fn error_response(code: Code, message: &str) -> Response {
    (
        http_status(code),
        [(header::CONTENT_TYPE, "application/json")],
        error_body(code, message),
    )
        .into_response()
}

/// A streamed error as grpc-gateway writes it.
fn stream_error(code: Code, message: &str) -> String {
    let http = http_status(code);
    format!(
        r#"{{"error":{{"grpc_code":{},"http_code":{},"message":{},"http_status":{}}}}}"#,
        code as i32,
        http.as_u16(),
        go_string(message),
        go_string(http.canonical_reason().unwrap_or("")),
    )
}

/// Why a request object was refused.
#[derive(Debug)]
pub struct BadJson(pub String);

/// Turns one JSON value into the request message `desc`, as grpc-gateway's
/// decoder reads it: `null` is the empty message, a value that is not an
/// object is refused, unknown fields are ignored.
pub fn message_from_json(
    desc: &MessageDescriptor,
    v: serde_json::Value,
) -> Result<DynamicMessage, BadJson> {
    let kind = match &v {
        serde_json::Value::Null => return Ok(DynamicMessage::new(desc.clone())),
        serde_json::Value::Object(_) => None,
        serde_json::Value::Array(_) => Some("array"),
        serde_json::Value::String(_) => Some("string"),
        serde_json::Value::Number(_) => Some("number"),
        serde_json::Value::Bool(_) => Some("bool"),
    };
    if let Some(kind) = kind {
        return Err(BadJson(format!(
            "json: cannot unmarshal {kind} into Go value of type map[string]json.RawMessage"
        )));
    }
    go_checks(desc, &v)?;
    let opts = DeserializeOptions::new().deny_unknown_fields(false);
    DynamicMessage::deserialize_with_options(desc.clone(), v, &opts)
        .map_err(|e| BadJson(e.to_string()))
}

/// The kind of a JSON value as Go's decoder names it.
fn go_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Refusals Go's decoder makes before the proto3 JSON mapping would, in Go's
/// words: an enum value given by a name the enum does not have (the mapping
/// would ignore it, like an unknown field, and the request would run with
/// the default), a bytes field that is not a string, base64 with a byte
/// outside its alphabet, a message that is not an object, a repeated field
/// that is not an array.
fn go_checks(desc: &MessageDescriptor, v: &serde_json::Value) -> Result<(), BadJson> {
    use prost_reflect::Kind;
    let serde_json::Value::Object(map) = v else {
        return Ok(());
    };
    for (name, value) in map {
        let Some(f) = desc
            .get_field_by_name(name)
            .or_else(|| desc.get_field_by_json_name(name))
        else {
            continue;
        };
        let values: Vec<&serde_json::Value> = match value {
            serde_json::Value::Array(a) if f.is_list() => a.iter().collect(),
            serde_json::Value::Null => continue,
            v if f.is_list() => {
                return Err(BadJson(format!(
                    "json: cannot unmarshal {} into Go value of type []json.RawMessage",
                    go_kind(v)
                )));
            }
            v => vec![v],
        };
        for v in values {
            match (f.kind(), v) {
                (Kind::Enum(e), serde_json::Value::String(s))
                    if e.get_value_by_name(s).is_none() =>
                {
                    // Go names a nested enum Message_Enum.
                    let go_name = match e.full_name().strip_prefix(e.package_name()) {
                        Some(rest) => format!(
                            "{}.{}",
                            e.package_name(),
                            rest.trim_start_matches('.').replace('.', "_")
                        ),
                        None => e.full_name().to_string(),
                    };
                    return Err(BadJson(format!(
                        "unknown value {} for enum {go_name}",
                        serde_json::Value::String(s.clone())
                    )));
                }
                (Kind::Bytes, serde_json::Value::String(s)) => {
                    use base64::Engine as _;
                    if let Err(base64::DecodeError::InvalidByte(at, b)) =
                        base64::engine::general_purpose::STANDARD.decode(s)
                        && !matches!(b, b'=' | b'\r' | b'\n')
                    {
                        return Err(BadJson(format!("illegal base64 data at input byte {at}")));
                    }
                }
                (Kind::Bytes, serde_json::Value::Null) => {}
                (Kind::Bytes, v) => {
                    return Err(BadJson(format!(
                        "json: cannot unmarshal {} into Go value of type []uint8",
                        go_kind(v)
                    )));
                }
                (Kind::Message(m), v @ serde_json::Value::Object(_)) => go_checks(&m, v)?,
                (Kind::Message(_), serde_json::Value::Null) => {}
                (Kind::Message(_), v) => {
                    return Err(BadJson(format!(
                        "json: cannot unmarshal {} into Go value of type map[string]json.RawMessage",
                        go_kind(v)
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The first JSON value of `buf`: `Ok(None)` when `buf` holds only white
/// space (or nothing), `Err` for a syntax error; with `more`, an incomplete
/// value asks for more bytes (`Ok(None)`) instead of failing.
fn next_value(buf: &[u8], more: bool) -> Result<Option<(serde_json::Value, usize)>, BadJson> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
    match it.next() {
        None => Ok(None),
        // A number or literal that ends where the bytes end may go on in
        // the next piece: wait for it (or for the end of the body).
        Some(Ok(v))
            if more
                && it.byte_offset() == buf.len()
                && !matches!(
                    v,
                    serde_json::Value::Object(_)
                        | serde_json::Value::Array(_)
                        | serde_json::Value::String(_)
                ) =>
        {
            Ok(None)
        }
        Some(Ok(v)) => Ok(Some((v, it.byte_offset()))),
        Some(Err(e)) if e.is_eof() && more => Ok(None),
        Some(Err(e)) if e.is_eof() => Err(BadJson("unexpected EOF".into())),
        Some(Err(e)) => Err(BadJson(e.to_string())),
    }
}

/// Decodes a whole request body (one request object; what follows it is
/// ignored, as grpc-gateway's decoder ignores it; an empty body is the empty
/// message) into the gRPC message bytes of `desc`.
pub fn decode_request(desc: &MessageDescriptor, body: &[u8]) -> Result<Vec<u8>, BadJson> {
    let msg = match next_value(body, false)? {
        None => DynamicMessage::new(desc.clone()),
        Some((v, _)) => message_from_json(desc, v)?,
    };
    Ok(prost::Message::encode_to_vec(&msg))
}

/// A response message's JSON, as etcd's gateway writes it.
pub fn response_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<String, String> {
    let msg = DynamicMessage::decode(desc.clone(), bytes).map_err(|e| e.to_string())?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true)
        .skip_default_fields(true)
        .use_enum_numbers(false);
    let mut out = Vec::with_capacity(bytes.len() * 2 + 64);
    let mut ser = serde_json::Serializer::new(&mut out);
    msg.serialize_with_options(&mut ser, &opts)
        .map_err(|e| e.to_string())?;
    let s = String::from_utf8(out).map_err(|e| e.to_string())?;
    Ok(go_escape(s))
}

/// A gRPC message with its length prefix.
fn frame(msg: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(msg.len() + 5);
    b.push(0);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    Bytes::from(b)
}

/// The in-process gRPC request for `route`, with the caller's token and
/// client certificate identity.
fn grpc_request(route: &Route, parts: &axum::http::request::Parts, body: Body) -> Request {
    let mut req = Request::new(body);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = axum::http::Uri::from_static(route.method);
    *req.version_mut() = axum::http::Version::HTTP_2;
    let h = req.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(a) = parts.headers.get(header::AUTHORIZATION) {
        h.insert(header::AUTHORIZATION, a.clone());
    }
    // grpc-gateway passes `Grpc-Metadata-<name>` headers on as metadata
    // `<name>` (so `Grpc-Metadata-Token` carries a token too).
    for (name, value) in &parts.headers {
        if let Some(md) = name.as_str().strip_prefix("grpc-metadata-")
            && let Ok(md) = header::HeaderName::from_bytes(md.as_bytes())
            && !md.as_str().starts_with("grpc-")
            && md != header::CONTENT_TYPE
            && md != header::TE
        {
            h.insert(md, value.clone());
        }
    }
    if let Some(cn) = parts.extensions.get::<super::PeerCn>() {
        req.extensions_mut().insert(cn.clone());
    }
    req
}

async fn call(g: &Gateway, req: Request) -> Response {
    let r: Result<Response, Infallible> = tower::ServiceExt::oneshot(g.grpc.clone(), req).await;
    match r {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Splits gRPC messages off the front of `buf`.
fn take_message(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    let msg = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Some(msg)
}

/// The gRPC response body as a stream of messages, then its status (`Err`
/// for anything but OK).
struct GrpcReader {
    body: Body,
    buf: Vec<u8>,
    done: bool,
}

impl GrpcReader {
    /// Puts a message read with [`GrpcReader::next`] back in front.
    fn unread(&mut self, msg: &[u8]) {
        self.buf.splice(0..0, frame(msg));
    }

    async fn next(&mut self) -> Option<Result<Vec<u8>, tonic::Status>> {
        loop {
            if let Some(m) = take_message(&mut self.buf) {
                return Some(Ok(m));
            }
            if self.done {
                return None;
            }
            let frame = std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(Pin::new(&mut self.body), cx)
            })
            .await;
            match frame {
                None => {
                    self.done = true;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(tonic::Status::unknown(e.to_string())));
                }
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => self.buf.extend_from_slice(&d),
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            self.done = true;
                            if let Some(st) = tonic::Status::from_header_map(&t)
                                && st.code() != Code::Ok
                            {
                                return Some(Err(st));
                            }
                        }
                    }
                },
            }
        }
    }
}

/// Calls `route` with `body` (gRPC frames); the response's status when the
/// call failed at once, else a reader of its messages.
async fn start(
    g: &Gateway,
    route: &Route,
    parts: &axum::http::request::Parts,
    body: Body,
) -> Result<GrpcReader, tonic::Status> {
    let resp = call(g, grpc_request(route, parts, body)).await;
    let (rparts, rbody) = resp.into_parts();
    if let Some(st) = tonic::Status::from_header_map(&rparts.headers)
        && st.code() != Code::Ok
    {
        return Err(st);
    }
    Ok(GrpcReader {
        body: rbody,
        buf: Vec::new(),
        done: false,
    })
}

fn json_response(body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::HeaderName::from_static("grpc-metadata-content-type"),
                "application/grpc",
            ),
        ],
        body,
    )
        .into_response()
}

/// The request body, whole, within the limit; else the refusal gRPC gives a
/// message over the limit.
async fn read_body(g: &Gateway, body: Body, declared: Option<usize>) -> Result<Bytes, Response> {
    let limit = g.body_limit();
    let too_large = |n: usize| {
        error_response(
            Code::ResourceExhausted,
            &format!("grpc: received message larger than max ({n} vs. {})", g.max),
        )
    };
    if let Some(n) = declared
        && n > limit
    {
        return Err(too_large(n));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(declared.unwrap_or(limit + 1)))
}

fn content_length(parts: &axum::http::request::Parts) -> Option<usize> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn unary(g: &Gateway, route: &Route, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_body(g, body, content_length(&parts)).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let msg = match decode_request(&descriptor(route.request), &body) {
        Ok(m) => m,
        Err(BadJson(e)) => return error_response(Code::InvalidArgument, &e),
    };
    let mut reader = match start(g, route, &parts, Body::from(frame(&msg))).await {
        Ok(r) => r,
        Err(st) => return error_response(st.code(), st.message()),
    };
    let first = reader.next().await;
    // Read to the end, so a status in the trailers is seen.
    let rest = reader.next().await;
    match (first, rest) {
        (Some(Ok(m)), None) => match response_json(&descriptor(route.response), &m) {
            Ok(j) => json_response(j),
            Err(e) => error_response(Code::Internal, &e),
        },
        (Some(Err(st)), _) | (_, Some(Err(st))) => error_response(st.code(), st.message()),
        (None, _) => error_response(Code::Internal, "grpc: no response message"),
        (Some(Ok(_)), Some(Ok(_))) => {
            error_response(Code::Internal, "grpc: more than one response message")
        }
    }
}

/// The stream of `{"result":..}` lines of a streaming call, ending with
/// grpc-gateway's error object if the call fails.
fn result_lines(reader: GrpcReader, response: &'static str) -> Body {
    let desc = descriptor(response);
    let s = futures::stream::unfold(Some(reader), move |reader| {
        let desc = desc.clone();
        async move {
            let mut reader = reader?;
            let chunk = match reader.next().await? {
                Ok(m) => match response_json(&desc, &m) {
                    Ok(j) => format!("{{\"result\":{j}}}\n"),
                    Err(e) => {
                        return Some((
                            Ok::<_, Infallible>(Bytes::from(stream_error(Code::Internal, &e))),
                            None,
                        ));
                    }
                },
                Err(st) => {
                    return Some((Ok(Bytes::from(stream_error(st.code(), st.message()))), None));
                }
            };
            Some((Ok(Bytes::from(chunk)), Some(reader)))
        }
    });
    Body::from_stream(s)
}

fn stream_response(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::HeaderName::from_static("grpc-metadata-content-type"),
        HeaderValue::from_static("application/grpc"),
    );
    r
}

fn stream_failed(st: &tonic::Status) -> Response {
    (
        http_status(st.code()),
        [(header::CONTENT_TYPE, "application/json")],
        stream_error(st.code(), st.message()),
    )
        .into_response()
}

async fn server_stream(g: &Gateway, route: &'static Route, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_body(g, body, content_length(&parts)).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let msg = match decode_request(&descriptor(route.request), &body) {
        Ok(m) => m,
        Err(BadJson(e)) => return error_response(Code::InvalidArgument, &e),
    };
    let mut reader = match start(g, route, &parts, Body::from(frame(&msg))).await {
        Ok(reader) => reader,
        Err(st) => return stream_failed(&st),
    };
    // As grpc-gateway: the answer's head waits for the first message (an
    // Observe of an election without a leader answers nothing until there
    // is one), and a call that fails before it answers the failure's status.
    match reader.next().await {
        Some(Ok(m)) => reader.unread(&m),
        Some(Err(st)) => return stream_failed(&st),
        None => {}
    }
    stream_response(result_lines(reader, route.response))
}

/// Request objects read one at a time from a request body.
struct JsonObjects {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    limit: usize,
    ended: bool,
}

impl JsonObjects {
    /// The next request object; `None` at the end of the body.
    async fn next(&mut self) -> Option<Result<serde_json::Value, BadJson>> {
        loop {
            match next_value(&self.buf, !self.ended) {
                Ok(Some((v, used))) => {
                    self.buf.drain(..used);
                    return Some(Ok(v));
                }
                Ok(None) if self.ended => return None,
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.buf.len() > self.limit {
                return Some(Err(BadJson("request object over the size limit".into())));
            }
            match self.body.next().await {
                Some(Ok(d)) => self.buf.extend_from_slice(&d),
                Some(Err(e)) => return Some(Err(BadJson(e.to_string()))),
                None => self.ended = true,
            }
        }
    }
}

async fn bidi(g: &Gateway, route: &'static Route, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let desc = descriptor(route.request);
    let mut objects = JsonObjects {
        body: body.into_data_stream(),
        buf: Vec::new(),
        limit: g.body_limit(),
        ended: false,
    };
    // As grpc-gateway: the first request object is decoded before the call
    // starts, and its failure is the call's (code Unknown).
    let first = match objects.next().await {
        None => None,
        Some(Ok(v)) => match message_from_json(&desc, v) {
            Ok(m) => Some(frame(&prost::Message::encode_to_vec(&m))),
            Err(BadJson(e)) => return error_response(Code::Unknown, &e),
        },
        Some(Err(BadJson(e))) => return error_response(Code::Unknown, &e),
    };
    // The later objects follow as the client sends them; a bad one ends the
    // request stream.
    let rest = futures::stream::unfold(Some(objects), move |objects| {
        let desc = desc.clone();
        async move {
            let mut objects = objects?;
            let v = objects.next().await?.ok()?;
            let m = message_from_json(&desc, v).ok()?;
            Some((frame(&prost::Message::encode_to_vec(&m)), Some(objects)))
        }
    });
    let frames = futures::stream::iter(first).chain(rest);
    let body = Body::from_stream(frames.map(Ok::<_, Infallible>));
    match start(g, route, &parts, body).await {
        Ok(reader) => stream_response(result_lines(reader, route.response)),
        Err(st) => stream_failed(&st),
    }
}

/// The gRPC message the gateway makes of a request body sent to `path`
/// (`None` for a path it does not serve); for tests and fuzzing.
pub fn translate(path: &str, json: &[u8]) -> Option<Result<Vec<u8>, BadJson>> {
    let route = route(path)?;
    Some(decode_request(&descriptor(route.request), json))
}

/// The JSON the gateway writes for the gRPC message `bytes` of type `name`
/// (a full name such as `etcdserverpb.RangeRequest`); for fuzzing.
pub fn message_json(name: &str, bytes: &[u8]) -> Result<String, String> {
    let desc = POOL
        .get_message_by_name(name)
        .ok_or_else(|| format!("no message {name}"))?;
    response_json(&desc, bytes)
}

/// The gRPC messages the gateway makes of a streamed request body of
/// `request` objects (as `/v3/watch` and `/v3/lease/keepalive` read them),
/// up to the first bad one; for fuzzing.
pub async fn decode_stream(
    request: &str,
    body: Body,
    limit: usize,
) -> Vec<Result<Vec<u8>, String>> {
    let Some(desc) = POOL.get_message_by_name(request) else {
        return vec![Err(format!("no message {request}"))];
    };
    let mut objects = JsonObjects {
        body: body.into_data_stream(),
        buf: Vec::new(),
        limit,
        ended: false,
    };
    let mut out = Vec::new();
    while let Some(v) = objects.next().await {
        match v.and_then(|v| message_from_json(&desc, v)) {
            Ok(m) => out.push(Ok(prost::Message::encode_to_vec(&m))),
            Err(BadJson(e)) => {
                out.push(Err(e));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_known_messages_and_methods() {
        for r in ROUTES {
            descriptor(r.request);
            descriptor(r.response);
            assert!(
                super::super::authz::need(r.method).is_some(),
                "{} is not in the authorization table",
                r.method
            );
        }
    }

    /// A streamed body gives the same messages however it is cut, also when
    /// a piece ends right after a literal (found by fuzzing: `null` then `val`
    /// in the next piece was taken for a `null` object).
    #[test]
    fn streamed_objects_do_not_depend_on_the_pieces() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let body = br#"{"ID":"300001"} nullval"#;
        let decode = |chunk: usize| {
            let pieces: Vec<Result<Bytes, std::io::Error>> = body
                .chunks(chunk)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            rt.block_on(decode_stream(
                "etcdserverpb.LeaseKeepAliveRequest",
                Body::from_stream(futures::stream::iter(pieces)),
                1 << 20,
            ))
        };
        let whole = decode(body.len());
        assert_eq!(whole.len(), 2, "{whole:?}");
        assert!(whole[0].is_ok() && whole[1].is_err(), "{whole:?}");
        for chunk in 1..body.len() {
            let cut = decode(chunk);
            assert_eq!(cut.len(), 2, "pieces of {chunk}: {cut:?}");
            assert_eq!(cut[0], whole[0], "pieces of {chunk}");
            assert!(cut[1].is_err(), "pieces of {chunk}: {cut:?}");
        }
    }

    #[test]
    fn json_mapping_is_etcds() {
        let put = translate(
            "/v3/kv/put",
            br#"{"key":"Zm9v","value":"YmFy","lease":"7"}"#,
        )
        .expect("a route")
        .expect("decodes");
        let p: crate::pb::etcdserverpb::PutRequest =
            prost::Message::decode(put.as_slice()).expect("a PutRequest");
        assert_eq!(
            (p.key.as_slice(), p.value.as_slice(), p.lease),
            (&b"foo"[..], &b"bar"[..], 7)
        );
        let resp = crate::pb::etcdserverpb::RangeResponse {
            header: Some(crate::pb::etcdserverpb::ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 0,
            }),
            kvs: vec![crate::pb::mvccpb::KeyValue {
                key: b"a<b".to_vec(),
                value: vec![],
                create_revision: 2,
                ..Default::default()
            }],
            more: false,
            count: 1,
        };
        let j = response_json(
            &descriptor("etcdserverpb.RangeResponse"),
            &prost::Message::encode_to_vec(&resp),
        )
        .expect("encodes");
        assert_eq!(
            j,
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3"},"kvs":[{"key":"YTxi","create_revision":"2"}],"count":"1"}"#
        );
        assert_eq!(
            error_body(Code::InvalidArgument, "a <b>"),
            r#"{"error":"a \u003cb\u003e","message":"a \u003cb\u003e","code":3}"#
        );
        assert!(translate("/v3/kv/range", b"[]").expect("a route").is_err());
        assert!(translate("/v3/kv/range", b"").expect("a route").is_ok());
        assert!(translate("/v3/kv/range", b"null").expect("a route").is_ok());
        for (body, want) in [
            (
                &br#"{"key":"!!"}"#[..],
                "illegal base64 data at input byte 0",
            ),
            (
                br#"{"key":"Zm9v-w=="}"#,
                "illegal base64 data at input byte 4",
            ),
            (
                br#"{"key":1}"#,
                "json: cannot unmarshal number into Go value of type []uint8",
            ),
            (
                br#"{"key":["a"]}"#,
                "json: cannot unmarshal array into Go value of type []uint8",
            ),
        ] {
            match translate("/v3/kv/range", body) {
                Some(Err(BadJson(e))) => assert_eq!(e, want),
                other => panic!("{other:?}"),
            }
        }
        for (path, body, want) in [
            (
                "/v3/election/proclaim",
                &br#"{"leader":"x"}"#[..],
                "json: cannot unmarshal string into Go value of type map[string]json.RawMessage",
            ),
            (
                "/v3/kv/txn",
                br#"{"compare":{}}"#,
                "json: cannot unmarshal object into Go value of type []json.RawMessage",
            ),
            (
                "/v3/kv/txn",
                br#"{"success":[{"request_put":5}]}"#,
                "json: cannot unmarshal number into Go value of type map[string]json.RawMessage",
            ),
        ] {
            match translate(path, body) {
                Some(Err(BadJson(e))) => assert_eq!(e, want),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            translate("/v3/kv/txn", br#"{"compare":null,"success":[]}"#).is_some_and(|r| r.is_ok())
        );
        assert!(translate("/v3/kv/nothing", b"{}").is_none());
        match translate("/v3/kv/range", br#"{"key":"YQ==","sort_order":"NOPE"}"#) {
            Some(Err(BadJson(e))) => assert_eq!(
                e,
                r#"unknown value "NOPE" for enum etcdserverpb.RangeRequest_SortOrder"#
            ),
            other => panic!("{other:?}"),
        }
        match translate(
            "/v3/kv/txn",
            br#"{"compare":[{"key":"YQ==","result":"SAME"}]}"#,
        ) {
            Some(Err(BadJson(e))) => assert_eq!(
                e,
                r#"unknown value "SAME" for enum etcdserverpb.Compare_CompareResult"#
            ),
            other => panic!("{other:?}"),
        }
    }
}
