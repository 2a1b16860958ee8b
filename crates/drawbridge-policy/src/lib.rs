//! Authorization as code: the Cedar schema Drawbridge ships, the policies compiled per route,
//! and the [`Decision`] for one request.
//!
//! A request is a Cedar request: the [`Principal`] as a `User`, `Service` or `ApiKey` entity
//! in its `Group`s, an action named after the method (`Action::"GET"`, in `Action::"read"`),
//! `Action::"connect"` for WebSockets or `Action::"grpc"`, the matched route as the resource
//! (`Route::"orders"`, in its `Upstream::"shop"`), and a context of typed values. The schema
//! is in [`schema`]; `docs/policy.md` describes it for policy authors.
//!
//! Evaluation is linear in the policies evaluated, so they are sliced when the snapshot is
//! compiled: a request evaluates only the policies whose scope can match its route, action
//! and principal type. The principal's entity is built once per verified credential and kept
//! with it; route and action entities are built once per snapshot; the context holds only
//! what the route's policies read.
//!
//! Nothing here knows about HTTP servers: callers hand in a [`RequestView`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod compile;
mod context;
mod decide;
mod request;
pub mod schema;

use std::sync::Arc;

use cedar_policy::{EntityTypeName, EntityUid, PolicySet};
use cedar_policy_core::ast;
use drawbridge_config::ValueType;

pub use compile::compile;
pub use decide::{BadRequest, DecideError, Decision, MFA_MAX_AGE, RequestView, StepUp, Verdict};
pub use drawbridge_identity::Principal;

/// The compiled policies of one snapshot: schema, policy sets sliced per route, and the
/// entities that do not change between requests.
pub struct Policies {
    /// The schema, as Cedar text (what `drawbridge schema` prints).
    pub schema_text: String,
    /// How many policies decide, and how many are in shadow.
    pub counts: (usize, usize),
    /// What `check` reports without refusing the policies.
    pub warnings: Vec<drawbridge_config::Diagnostic>,
    /// Principals' entities, built once per caller.
    entities: drawbridge_identity::PrincipalCache<(), std::sync::Arc<decide::PrincipalEntity>>,
    /// Decisions made, remembered per caller (owned by these policies: a reload starts
    /// afresh).
    decisions: drawbridge_identity::PrincipalCache<decide::DecisionKey, decide::Remembered>,
    types: Types,
    attributes: Vec<(smol_str::SmolStr, ValueType)>,
    /// Authenticators whose callers and groups policies name plainly.
    plain_names: Vec<std::sync::Arc<str>>,
    actions: [ActionEntry; Action::COUNT],
    /// By route index in the configuration; `None` for routes that are not authorized.
    routes: Vec<Option<RoutePolicies>>,
}

/// What a request does, as Cedar sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `OPTIONS`.
    Options,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
    /// `CONNECT`.
    Connect,
    /// `TRACE`.
    Trace,
    /// A WebSocket upgrade (`Action::"connect"`).
    WebSocket,
    /// A gRPC call (`Action::"grpc"`); service and method are in the context.
    Grpc,
}

impl Action {
    const COUNT: usize = 11;
    /// Every action, in the order of the schema.
    pub const ALL: [Action; Action::COUNT] = [
        Action::Get,
        Action::Head,
        Action::Options,
        Action::Post,
        Action::Put,
        Action::Patch,
        Action::Delete,
        Action::Connect,
        Action::Trace,
        Action::WebSocket,
        Action::Grpc,
    ];

    /// The action of a plain HTTP request with this method; `None` for a method Drawbridge
    /// has no action for (such a request is refused).
    pub fn of_method(method: &str) -> Option<Action> {
        Some(match method {
            "GET" => Action::Get,
            "HEAD" => Action::Head,
            "OPTIONS" => Action::Options,
            "POST" => Action::Post,
            "PUT" => Action::Put,
            "PATCH" => Action::Patch,
            "DELETE" => Action::Delete,
            "CONNECT" => Action::Connect,
            "TRACE" => Action::Trace,
            _ => return None,
        })
    }

    /// The Cedar action id (`Action::"<id>"`).
    pub fn id(self) -> &'static str {
        match self {
            Action::Get => "GET",
            Action::Head => "HEAD",
            Action::Options => "OPTIONS",
            Action::Post => "POST",
            Action::Put => "PUT",
            Action::Patch => "PATCH",
            Action::Delete => "DELETE",
            Action::Connect => "CONNECT",
            Action::Trace => "TRACE",
            Action::WebSocket => "connect",
            Action::Grpc => "grpc",
        }
    }

    /// The action group it belongs to, if any. A gRPC call is a write: it is a `POST` whose
    /// content type the client chooses, so a `forbid` on `Action::"write"` must cover it.
    pub fn group(self) -> Option<&'static str> {
        match self {
            Action::Get | Action::Head | Action::Options => Some("read"),
            Action::Post | Action::Put | Action::Patch | Action::Delete | Action::Grpc => {
                Some("write")
            }
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Entity type names, made once.
struct Types {
    user: EntityTypeName,
    service: EntityTypeName,
    api_key: EntityTypeName,
    anonymous: EntityTypeName,
    group: EntityTypeName,
}

impl Types {
    fn principal(&self, kind: drawbridge_config::PrincipalKind) -> &EntityTypeName {
        match kind {
            drawbridge_config::PrincipalKind::User => &self.user,
            drawbridge_config::PrincipalKind::Service => &self.service,
            drawbridge_config::PrincipalKind::ApiKey => &self.api_key,
            drawbridge_config::PrincipalKind::Anonymous => &self.anonymous,
        }
    }
}

/// Every kind of principal, in slice order.
const KINDS: [drawbridge_config::PrincipalKind; 4] = [
    drawbridge_config::PrincipalKind::User,
    drawbridge_config::PrincipalKind::Service,
    drawbridge_config::PrincipalKind::ApiKey,
    drawbridge_config::PrincipalKind::Anonymous,
];

fn kind_index(kind: drawbridge_config::PrincipalKind) -> usize {
    match kind {
        drawbridge_config::PrincipalKind::User => 0,
        drawbridge_config::PrincipalKind::Service => 1,
        drawbridge_config::PrincipalKind::ApiKey => 2,
        drawbridge_config::PrincipalKind::Anonymous => 3,
    }
}

struct ActionEntry {
    uid: EntityUid,
    entity: Arc<ast::Entity>,
}

/// One route's policies and entity.
struct RoutePolicies {
    uid: EntityUid,
    entity: Arc<ast::Entity>,
    /// Path parameter names, in the order the pattern captures them.
    params: Vec<smol_str::SmolStr>,
    /// Selected query parameters with their types.
    query: Vec<(smol_str::SmolStr, ValueType)>,
    /// Selected headers.
    headers: Vec<(smol_str::SmolStr, http::HeaderName)>,
    enforce: Slices,
    shadow: Option<Slices>,
}

/// Policy sets by action and principal type.
struct Slices(Vec<Slice>);

impl Slices {
    fn get(&self, action: Action, kind: drawbridge_config::PrincipalKind) -> &Slice {
        &self.0[action.index() * KINDS.len() + kind_index(kind)]
    }
}

/// The policies one (route, action, principal type) evaluates, and the context they read.
struct Slice {
    set: PolicySet,
    reads: context::Reads,
}
