//! One decision: principal, action, route and context in; allow or deny, with the policies
//! that decided, out.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use cedar_policy::{Authorizer, EntityId, EntityUid};
use cedar_policy_core::ast;
use cedar_policy_core::entities::{Entities as CoreEntities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;
use drawbridge_config::{MfaMethod, ValueType};
use smol_str::SmolStr;

use crate::context::{self, Reads};
pub use crate::request::{BadRequest, RequestView};
use crate::{Action, Policies, Principal, Slice};

/// The outcome of one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The verdict of the policies that decide.
    pub enforced: Verdict,
    /// The verdict of the shadow policies, when some are loaded: recorded, never applied.
    pub shadow: Option<Verdict>,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.enforced.allow
    }

    /// Whether a shadow set is loaded and decided otherwise.
    pub fn disagrees(&self) -> bool {
        self.shadow
            .as_ref()
            .is_some_and(|s| s.allow != self.enforced.allow)
    }
}

/// One policy set's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed: some `permit` applied, no `forbid` did, and no policy failed to evaluate.
    pub allow: bool,
    /// The policies that decided: the applying `permit`s when allowed, the applying `forbid`s
    /// when forbidden; empty when nothing applied (denied by default).
    pub policies: Vec<String>,
    /// Policies that failed to evaluate, with why. Any error denies.
    pub errors: Vec<String>,
}

/// The annotation that tells, on a policy that asks for a second factor, how lately it must
/// have been done (`@mfa_max_age("5m")`): what a step-up challenge states as `max_age`.
pub const MFA_MAX_AGE: &str = "mfa_max_age";

/// What a refused request needs to be let through: a second factor of one of `methods`,
/// done within `max_age` when the policies say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    /// The factors that would each be enough.
    pub methods: Vec<MfaMethod>,
    /// The shortest `@mfa_max_age` of the policies involved.
    pub max_age: Option<std::time::Duration>,
}

/// Why no decision could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// The request is malformed where the policies look (a precise 400).
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    /// The route is not one the policies decide for (a bug in the caller: denies).
    #[error("route {0} is not authorized by policy")]
    NotAuthorized(usize),
    /// Cedar refused the request or entities Drawbridge built (denies).
    #[error("cannot evaluate: {0}")]
    Internal(String),
}

/// A principal's entity, built once per caller (see [`Policies::principal_entity`]).
pub(crate) struct PrincipalEntity {
    uid: EntityUid,
    entity: Arc<ast::Entity>,
}

/// A decision made, by route, action and the fingerprint of the context values the
/// policies read. A decision is a pure function of the policies, the principal's entity
/// (fixed for the credential), the route and action entities (fixed for the policies) and
/// those context values: the same inputs give the same decision, so a repeat asks no
/// evaluation. The values themselves are kept and compared: a fingerprint alone decides
/// nothing.
pub(crate) type DecisionKey = (usize, Action, u64);

/// What a remembered decision was made on, and the decision.
pub(crate) type Remembered = (Arc<BTreeMap<SmolStr, ast::Value>>, Arc<Decision>);

impl Policies {
    /// Decides `req` by `principal` on the route at `route` (its index in the config).
    pub fn decide(
        &self,
        route: usize,
        principal: &Arc<Principal>,
        req: &RequestView<'_>,
    ) -> Result<Arc<Decision>, DecideError> {
        let rp = self
            .routes
            .get(route)
            .and_then(Option::as_ref)
            .ok_or(DecideError::NotAuthorized(route))?;
        let enforce = rp.enforce.get(req.action, principal.kind);
        let shadow = rp
            .shadow
            .as_ref()
            .map(|s| s.get(req.action, principal.kind));
        let reads = shadow.map_or(enforce.reads, |s| enforce.reads.union(s.reads));
        let grpc = req.action == Action::Grpc;
        // Built even when nothing is evaluated: the selected query and headers are checked.
        let ctx = context::build(reads, rp, principal, &principal.factors, req, grpc)?;
        if enforce.set.is_empty() && shadow.is_none_or(|s| s.set.is_empty()) {
            let none = Verdict {
                allow: false,
                policies: Vec::new(),
                errors: Vec::new(),
            };
            return Ok(Arc::new(Decision {
                shadow: shadow.map(|_| none.clone()),
                enforced: none,
            }));
        }
        let key = (route, req.action, ctx.fingerprint);
        if let Some((values, d)) = self.decisions.get(principal, &key)
            && *values == *ctx.values
        {
            return Ok(d);
        }
        let pe = self.principal_entity(principal)?;
        let action = &self.actions[req.action.index()];
        let entities = entities(&pe, rp, action)?;
        let request = cedar_policy::Request::new(
            pe.uid.clone(),
            action.uid.clone(),
            rp.uid.clone(),
            cedar_policy::Context::from(ast::Context::Value(ctx.values.clone())),
            None,
        )
        .map_err(|e| DecideError::Internal(e.to_string()))?;
        let enforced = evaluate(&request, enforce, &entities);
        let shadow = shadow.map(|s| evaluate(&request, s, &entities));
        let decision = Arc::new(Decision { enforced, shadow });
        self.decisions
            .insert(principal, key, (ctx.values, decision.clone()));
        Ok(decision)
    }

    /// Whether a second factor would let through what `route`'s policies refused
    /// (`denied`): the request is decided again as if the principal had just proved each of
    /// `candidates`, and the methods that would be allowed are returned, with the shortest
    /// `@mfa_max_age` of the policies involved. `None` when no factor would change the
    /// answer (a plain denial), when the policies do not read `context.authn`, or when the
    /// refusal came from an evaluation error. Nothing is remembered of these decisions.
    pub fn step_up(
        &self,
        route: usize,
        principal: &Arc<Principal>,
        req: &RequestView<'_>,
        denied: &Verdict,
        candidates: &[MfaMethod],
    ) -> Option<StepUp> {
        let rp = self.routes.get(route)?.as_ref()?;
        let enforce = rp.enforce.get(req.action, principal.kind);
        if denied.allow
            || !denied.errors.is_empty()
            || enforce.set.is_empty()
            || !enforce.reads.has("authn")
        {
            return None;
        }
        let pe = self.principal_entity(principal).ok()?;
        let action = &self.actions[req.action.index()];
        let entities = entities(&pe, rp, action).ok()?;
        let now = req
            .now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let grpc = req.action == Action::Grpc;
        let mut methods = Vec::new();
        let mut involved: Vec<String> = denied.policies.clone();
        for &method in candidates {
            // The factor as if proved now (whatever time the caller's own claims to have).
            let mut factors = principal.factors.clone();
            factors.retain(|f| f.method != method);
            factors.push(drawbridge_identity::Factor { method, at: now });
            let ctx = context::build(enforce.reads, rp, principal, &factors, req, grpc).ok()?;
            let request = cedar_policy::Request::new(
                pe.uid.clone(),
                action.uid.clone(),
                rp.uid.clone(),
                cedar_policy::Context::from(ast::Context::Value(ctx.values)),
                None,
            )
            .ok()?;
            let v = evaluate(&request, enforce, &entities);
            if v.allow {
                methods.push(method);
                involved.extend(v.policies);
            }
        }
        if methods.is_empty() {
            return None;
        }
        let max_age = involved
            .iter()
            .filter_map(|id| {
                enforce
                    .set
                    .policy(&cedar_policy::PolicyId::new(id))?
                    .annotation(MFA_MAX_AGE)
                    .and_then(|a| humantime::parse_duration(a).ok())
            })
            .min();
        Some(StepUp { methods, max_age })
    }

    /// The principal's entity: built once per caller and kept, so a caller whose
    /// credential is cached, or checked again and found the same, costs no rebuild.
    fn principal_entity(&self, p: &Arc<Principal>) -> Result<Arc<PrincipalEntity>, DecideError> {
        if let Some(e) = self.entities.get(p, &()) {
            return Ok(e);
        }
        let built = Arc::new(self.build_principal(p)?);
        self.entities.insert(p, (), built.clone());
        Ok(built)
    }

    /// A name of `p`'s (its id, a group) as policies write it: `<authenticator>/<name>`, so
    /// that no two authenticators' callers or groups are one; plain for the authenticators
    /// in `[policy] plain_names`, and for the anonymous caller.
    fn qualified<'a>(&self, p: &Principal, name: &'a str) -> std::borrow::Cow<'a, str> {
        if p.kind == drawbridge_config::PrincipalKind::Anonymous
            || self.plain_names.iter().any(|n| **n == *p.authenticator)
        {
            std::borrow::Cow::Borrowed(name)
        } else {
            std::borrow::Cow::Owned(format!("{}/{name}", p.authenticator))
        }
    }

    fn build_principal(&self, p: &Principal) -> Result<PrincipalEntity, DecideError> {
        let uid = EntityUid::from_type_name_and_id(
            self.types.principal(p.kind).clone(),
            EntityId::new(self.qualified(p, &p.id)),
        );
        // Built from values directly: the facade's `Entity::new` evaluates each attribute as
        // an expression and costs several times as much (criterion: 12.6 us a new principal).
        let parents: HashSet<ast::EntityUID> = p
            .groups
            .iter()
            .map(|g| {
                EntityUid::from_type_name_and_id(
                    self.types.group.clone(),
                    EntityId::new(self.qualified(p, g)),
                )
                .as_ref()
                .clone()
            })
            .collect();
        let text = |s: &str| ast::PartialValue::Value(ast::Value::from(SmolStr::new(s)));
        let mut attrs: Vec<(SmolStr, ast::PartialValue)> = vec![
            (SmolStr::new_static("id"), text(&p.id)),
            (SmolStr::new_static("authenticator"), text(&p.authenticator)),
        ];
        if let Some(iss) = &p.issuer {
            attrs.push((SmolStr::new_static("issuer"), text(iss)));
        }
        for (name, ty) in &self.attributes {
            if let Some(v) = p.attributes.get(name.as_str()).and_then(|v| typed(v, *ty)) {
                attrs.push((name.clone(), ast::PartialValue::Value(v)));
            }
        }
        let entity = ast::Entity::new_with_attr_partial_value(
            uid.as_ref().clone(),
            attrs,
            // Groups have no parents: the principal's ancestors are its groups, closed.
            HashSet::new(),
            parents,
            [],
        );
        Ok(PrincipalEntity {
            uid,
            entity: Arc::new(entity),
        })
    }
}

/// The entities of one request: the principal's, the route's and the action's.
fn entities(
    pe: &PrincipalEntity,
    rp: &crate::RoutePolicies,
    action: &crate::ActionEntry,
) -> Result<cedar_policy::Entities, DecideError> {
    let entities = CoreEntities::new()
        .add_entities(
            [pe.entity.clone(), rp.entity.clone(), action.entity.clone()],
            None::<&NoEntitiesSchema>,
            // The principal's ancestors are its groups, which have none; a route's its
            // upstream; an action's its group: each list is already closed.
            TCComputation::AssumeAlreadyComputed,
            Extensions::none(),
        )
        .map_err(|e| DecideError::Internal(e.to_string()))?;
    Ok(cedar_policy::Entities::from(entities))
}

/// A credential's attribute as the schema types it; left out when it does not fit (a policy
/// must then test `principal has name`, and a missing attribute never permits).
fn typed(v: &serde_json::Value, ty: ValueType) -> Option<ast::Value> {
    use serde_json::Value as J;
    let text = |s: &str| ast::Value::from(SmolStr::new(s));
    Some(match (ty, v) {
        (ValueType::String, J::String(s)) => text(s),
        (ValueType::Long, J::Number(n)) => ast::Value::from(n.as_i64()?),
        (ValueType::Long, J::String(s)) => ast::Value::from(s.parse::<i64>().ok()?),
        (ValueType::Bool, J::Bool(b)) => ast::Value::from(*b),
        (ValueType::StringSet, J::Array(a)) => ast::Value::set(
            a.iter()
                .map(|x| x.as_str().map(text))
                .collect::<Option<Vec<_>>>()?,
            None,
        ),
        (ValueType::StringSet, J::String(s)) => {
            ast::Value::set(s.split_ascii_whitespace().map(text), None)
        }
        _ => return None,
    })
}

thread_local! {
    static AUTHORIZER: Authorizer = Authorizer::new();
}

fn evaluate(
    request: &cedar_policy::Request,
    slice: &Slice,
    entities: &cedar_policy::Entities,
) -> Verdict {
    if slice.set.is_empty() {
        return Verdict {
            allow: false,
            policies: Vec::new(),
            errors: Vec::new(),
        };
    }
    let response = AUTHORIZER.with(|a| a.is_authorized(request, &slice.set, entities));
    let d = response.diagnostics();
    let mut policies: Vec<String> = d.reason().map(|id| id.to_string()).collect();
    policies.sort_unstable();
    let errors: Vec<String> = d.errors().map(|e| e.to_string()).collect();
    // Cedar skips a policy that fails to evaluate; a skipped `forbid` must not let a request
    // through, so any error denies.
    let allow = response.decision() == cedar_policy::Decision::Allow && errors.is_empty();
    if !allow && response.decision() == cedar_policy::Decision::Allow {
        // The permits did not decide: the errors did.
        policies.clear();
    }
    Verdict {
        allow,
        policies,
        errors,
    }
}

/// What a policy reads of the context.
pub(crate) fn reads_of(p: &cedar_policy::Policy) -> Reads {
    p.to_json().map_or(Reads::ALL, |j| Reads::of_policy(&j))
}
