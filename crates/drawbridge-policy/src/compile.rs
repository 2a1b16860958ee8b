//! Policy files -> [`Policies`]: parse, name, check against the schema (strictly), then slice
//! per route, action and principal type. Every problem names the file and line.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet,
    PrincipalConstraint, ResourceConstraint, Schema, ValidationMode, Validator,
};
use drawbridge_config::{Config, Diagnostic, Diagnostics, Location, PolicyFile};
use miette::Diagnostic as _;

use crate::decide::reads_of;
use crate::{Action, ActionEntry, Policies, RoutePolicies, Slice, Slices, Types};

/// Compiles the policies of `config`; `None` when it has no `[policy]`.
pub fn compile(config: &Config) -> Result<Option<Policies>, Diagnostics> {
    let Some(pc) = &config.policy else {
        return Ok(None);
    };
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let schema_text = crate::schema::text(config);
    query_types_agree(config, &mut errors);
    let schema = match Schema::from_cedarschema_str(&schema_text) {
        Ok((s, _)) => s,
        Err(e) => {
            // The schema is Drawbridge's own; a failure here is a name the config let through.
            errors.push(Diagnostic {
                location: pc.location.clone(),
                field: "policy".into(),
                message: format!("the policy schema cannot be built: {e}"),
                help: e.help().map(|h| h.to_string()),
            });
            return Err(Diagnostics(errors));
        }
    };
    let validator = Validator::new(schema.clone());
    let mut ids = HashMap::new();
    let enforce = load(
        &pc.enforce,
        "policy.files",
        &validator,
        &mut ids,
        &mut errors,
        &mut warnings,
    );
    let shadow = (!pc.shadow.is_empty()).then(|| {
        load(
            &pc.shadow,
            "policy.shadow",
            &validator,
            &mut ids,
            &mut errors,
            &mut warnings,
        )
    });
    known_entities(config, &enforce, &ids, &mut errors, &mut warnings);
    if let Some(s) = &shadow {
        known_entities(config, s, &ids, &mut errors, &mut warnings);
    }
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }

    let t = |s: &str| EntityTypeName::from_str(s).map_err(|e| internal(pc, e.to_string()));
    let types = Types {
        user: t("User")?,
        service: t("Service")?,
        api_key: t("ApiKey")?,
        anonymous: t("Anonymous")?,
        group: t("Group")?,
    };
    let route_type = t("Route")?;
    let upstream_type = t("Upstream")?;
    let action_type = t("Action")?;
    let action_entities = schema
        .action_entities()
        .map_err(|e| internal(pc, e.to_string()))?;
    let mut actions = Vec::new();
    for a in Action::ALL {
        let uid = EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.id()));
        let entity = action_entities
            .get(&uid)
            .ok_or_else(|| internal(pc, format!("the schema has no action `{}`", a.id())))?;
        actions.push(ActionEntry {
            uid,
            entity: Arc::new(entity.as_ref().clone()),
        });
    }
    let actions: [ActionEntry; Action::COUNT] = actions
        .try_into()
        .map_err(|_| internal(pc, "action table".into()))?;

    let group_of = |a: Action| {
        a.group()
            .map(|g| EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(g)))
    };
    // What each policy reads of the context, worked out once (it re-parses the policy).
    let reads: HashMap<PolicyId, crate::context::Reads> = enforce
        .policies()
        .chain(shadow.iter().flat_map(|s| s.policies()))
        .map(|p| (p.id().clone(), reads_of(p)))
        .collect();
    let mut routes = Vec::new();
    let mut used: HashSet<PolicyId> = HashSet::new();
    for r in &config.routes {
        if !r.authorizes() {
            routes.push(None);
            continue;
        }
        let uid = EntityUid::from_type_name_and_id(route_type.clone(), EntityId::new(&r.name));
        let upstream = EntityUid::from_type_name_and_id(
            upstream_type.clone(),
            EntityId::new(&config.upstreams[r.upstream].name),
        );
        let entity = Entity::new_no_attrs(uid.clone(), [upstream.clone()].into());
        let mut slice = |set: &PolicySet| -> Result<Slices, Diagnostics> {
            let mut out = Vec::with_capacity(Action::COUNT * crate::KINDS.len());
            for a in Action::ALL {
                let action_uid = &actions[a.index()].uid;
                let group = group_of(a);
                for kind in crate::KINDS {
                    let ptype = types.principal(kind);
                    let mut sliced = PolicySet::new();
                    let mut slice_reads = crate::context::Reads::default();
                    for p in set.policies() {
                        if resource_fits(p, &uid, &upstream, &route_type)
                            && action_fits(p, action_uid, group.as_ref())
                            && principal_fits(p, ptype, &types)
                        {
                            used.insert(p.id().clone());
                            slice_reads = slice_reads.union(
                                reads
                                    .get(p.id())
                                    .copied()
                                    .unwrap_or(crate::context::Reads::ALL),
                            );
                            sliced
                                .add(p.clone())
                                .map_err(|e| Diagnostics(vec![internal(pc, e.to_string())]))?;
                        }
                    }
                    out.push(Slice {
                        set: sliced,
                        reads: slice_reads,
                    });
                }
            }
            Ok(Slices(out))
        };
        let enforce_slices = slice(&enforce)?;
        let shadow_slices = match &shadow {
            Some(s) => Some(slice(s)?),
            None => None,
        };
        let headers = r
            .context
            .headers
            .iter()
            .map(|h| {
                http::HeaderName::from_bytes(h.as_bytes())
                    .map(|n| (smol_str::SmolStr::new(h), n))
                    .map_err(|e| internal(pc, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        routes.push(Some(RoutePolicies {
            uid,
            entity: Arc::new(entity.as_ref().clone()),
            params: r.params.iter().map(smol_str::SmolStr::new).collect(),
            query: r
                .context
                .query
                .iter()
                .map(|(n, t)| (smol_str::SmolStr::new(n), *t))
                .collect(),
            headers,
            enforce: enforce_slices,
            shadow: shadow_slices,
        }));
    }
    for p in enforce
        .policies()
        .chain(shadow.iter().flat_map(|s| s.policies()))
    {
        if !used.contains(p.id()) {
            let (file, line) = ids.get(p.id()).cloned().unwrap_or_default();
            warnings.push(Diagnostic {
                location: Location {
                    file: file.into(),
                    line,
                    column: 1,
                },
                field: format!("policy `{}`", p.id()),
                message: "the policy applies to no route that policies decide for".into(),
                help: Some(
                    "check its `resource` and `action` scope against the routes, and that those routes authenticate callers"
                        .into(),
                ),
            });
        }
    }

    Ok(Some(Policies {
        schema_text,
        counts: (
            enforce.num_of_policies(),
            shadow.as_ref().map_or(0, PolicySet::num_of_policies),
        ),
        warnings,
        entities: drawbridge_identity::PrincipalCache::new(MAX_PRINCIPALS),
        decisions: drawbridge_identity::PrincipalCache::new(MAX_DECISIONS),
        types,
        plain_names: pc.plain_names.iter().map(|n| n.as_str().into()).collect(),
        attributes: pc
            .attributes
            .iter()
            .map(|(n, t)| (smol_str::SmolStr::new(n), *t))
            .collect(),
        actions,
        routes,
    }))
}

fn internal(pc: &drawbridge_config::PolicyConfig, message: String) -> Diagnostic {
    Diagnostic {
        location: pc.location.clone(),
        field: "policy".into(),
        message,
        help: None,
    }
}

/// Parses and checks the files of one set. Each policy is named by its `@id("...")`
/// annotation, else by `file:line`; ids are unique across both sets.
fn load(
    files: &[PolicyFile],
    field: &str,
    validator: &Validator,
    ids: &mut HashMap<PolicyId, (String, usize)>,
    errors: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) -> PolicySet {
    let mut set = PolicySet::new();
    for f in files {
        let lines = Lines::new(&f.text);
        let parsed = match PolicySet::from_str(&f.text) {
            Ok(p) => p,
            Err(e) => {
                for (offset, message, help) in flatten(&e) {
                    errors.push(diag(&f.path, &lines, offset, field.into(), message, help));
                }
                continue;
            }
        };
        if let Some(t) = parsed.templates().next() {
            errors.push(diag(
                &f.path,
                &lines,
                locate_text(&f.text, &t.to_cedar(), 0).unwrap_or(0),
                field.into(),
                "policy templates are not supported".into(),
                Some("write static policies (no `?principal` or `?resource` slots)".into()),
            ));
            continue;
        }
        // Cedar names a file's policies policy0, policy1... in the order written.
        let mut policies: Vec<&Policy> = parsed.policies().collect();
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let name = f.path.file_name().map_or_else(
            || f.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut from = 0;
        let mut file_set = PolicySet::new();
        for p in policies {
            let offset = p
                .to_cedar()
                .and_then(|text| locate_text(&f.text, &text, from))
                .unwrap_or(from);
            from = offset + 1;
            let line = lines.line(offset);
            let id = match p.annotation("id") {
                Some(id) => id.to_string(),
                None => format!("{name}:{line}"),
            };
            let pid = PolicyId::new(&id);
            if let Some((other_file, other_line)) = ids.get(&pid) {
                errors.push(diag(
                    &f.path,
                    &lines,
                    offset,
                    field.into(),
                    format!("policy id `{id}` is already used at {other_file}:{other_line}"),
                    Some("give each policy its own `@id(\"...\")`".into()),
                ));
                continue;
            }
            ids.insert(pid.clone(), (f.path.display().to_string(), line));
            if let Some(age) = p.annotation(crate::MFA_MAX_AGE)
                && humantime::parse_duration(age).map_or(true, |d| d.is_zero())
            {
                errors.push(diag(
                    &f.path,
                    &lines,
                    offset,
                    format!("policy `{id}`"),
                    format!("`@{}(\"{age}\")` is not a duration", crate::MFA_MAX_AGE),
                    Some(
                        "write how lately the factor must have been done: `@mfa_max_age(\"5m\")`"
                            .into(),
                    ),
                ));
            }
            if let Err(e) = file_set.add(p.new_id(pid)) {
                errors.push(diag(
                    &f.path,
                    &lines,
                    offset,
                    field.into(),
                    e.to_string(),
                    None,
                ));
            }
        }
        let result = validator.validate(&file_set, ValidationMode::Strict);
        // Cedar checks a policy once per request type it applies to (principal type x
        // action) and reports the same mistake for each; one report per place is enough.
        let mut reported: HashSet<(PolicyId, usize)> = HashSet::new();
        // A policy with an error (an unknown action) is also "impossible" to Cedar: one
        // report of the cause is enough.
        let erred: HashSet<&PolicyId> = result.validation_errors().map(|e| e.policy_id()).collect();
        for e in result.validation_errors() {
            let offset = e
                .labels()
                .and_then(|mut l| l.next())
                .map_or(0, |l| l.offset());
            if !reported.insert((e.policy_id().clone(), offset)) {
                continue;
            }
            errors.push(diag(
                &f.path,
                &lines,
                offset,
                format!("policy `{}`", e.policy_id()),
                e.to_string(),
                e.help().map(|h| h.to_string()),
            ));
        }
        for w in result.validation_warnings() {
            if matches!(w, cedar_policy::ValidationWarning::ImpossiblePolicy(_))
                && erred.contains(w.policy_id())
            {
                continue;
            }
            let offset = w
                .labels()
                .and_then(|mut l| l.next())
                .map_or(0, |l| l.offset());
            let d = diag(
                &f.path,
                &lines,
                offset,
                format!("policy `{}`", w.policy_id()),
                w.to_string(),
                w.help().map(|h| h.to_string()),
            );
            // A condition that is always false hides a mistake (a `forbid` that never
            // fires); text that reads one way and runs another hides worse.
            let grave = matches!(
                w,
                cedar_policy::ValidationWarning::ImpossiblePolicy(_)
                    | cedar_policy::ValidationWarning::BidiCharsInString(_)
                    | cedar_policy::ValidationWarning::BidiCharsInIdentifier(_)
            );
            if grave {
                let mut d = d;
                if d.help.is_none()
                    && matches!(w, cedar_policy::ValidationWarning::ImpossiblePolicy(_))
                {
                    d.help = Some(IMPOSSIBLE_HELP.into());
                }
                errors.push(d);
            } else {
                warnings.push(d);
            }
        }
        for p in file_set.policies() {
            if let Err(e) = set.add(p.clone()) {
                errors.push(diag(&f.path, &lines, 0, field.into(), e.to_string(), None));
            }
        }
    }
    set
}

const IMPOSSIBLE_HELP: &str = "a `has` test of something the schema does not declare is always false: declare principal attributes in `[policy] attributes`, path parameters in the route's path (`{name}`), query parameters and headers in `[routes.context]`";

/// Every route and upstream a policy names must exist: a policy about a route that is not
/// there protects nothing (a typo in a `forbid` would silently do nothing).
fn known_entities(
    config: &Config,
    set: &PolicySet,
    ids: &HashMap<PolicyId, (String, usize)>,
    errors: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) {
    let routes: HashSet<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    let upstreams: HashSet<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    for p in set.policies() {
        // The policy's own file and line, where it was read.
        let location = || match ids.get(p.id()) {
            Some((file, line)) => Location {
                file: file.into(),
                line: *line,
                column: 1,
            },
            None => config.policy.as_ref().map_or_else(
                || config.routes[0].location.clone(),
                |pc| pc.location.clone(),
            ),
        };
        let mut named: Vec<EntityUid> = p.entity_literals();
        match p.resource_constraint() {
            ResourceConstraint::In(u)
            | ResourceConstraint::Eq(u)
            | ResourceConstraint::IsIn(_, u) => named.push(u),
            _ => {}
        }
        match p.principal_constraint() {
            PrincipalConstraint::In(u)
            | PrincipalConstraint::Eq(u)
            | PrincipalConstraint::IsIn(_, u) => named.push(u),
            _ => {}
        }
        // The resource is among the literals too: each name is checked once.
        named.sort_by_key(ToString::to_string);
        named.dedup();
        for uid in named {
            let ty = uid.type_name().to_string();
            let id = uid.id().unescaped().to_string();
            let (known, what, names) = match ty.as_str() {
                "Route" => (routes.contains(id.as_str()), "route", &routes),
                "Upstream" => (upstreams.contains(id.as_str()), "upstream", &upstreams),
                "User" | "Service" | "ApiKey" | "Group" => {
                    if let Some((message, help, fatal)) = caller_name(config, &ty, &id) {
                        let d = Diagnostic {
                            location: location(),
                            field: format!("policy `{}`", p.id()),
                            message,
                            help: Some(help),
                        };
                        if fatal {
                            errors.push(d);
                        } else {
                            warnings.push(d);
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            if !known {
                let help = match drawbridge_config::nearest(&id, names.iter().copied()) {
                    Some(near) => format!("did you mean `{ty}::\"{near}\"`?"),
                    None => format!("the {what}s are named in the config file"),
                };
                errors.push(Diagnostic {
                    location: location(),
                    field: format!("policy `{}`", p.id()),
                    message: format!("no {what} is named `{id}`"),
                    help: Some(help),
                });
            }
        }
    }
}

/// What is wrong with a policy naming the caller or group `ty::"id"`: (message, help,
/// whether it is an error). Callers are named `<authenticator>/<id>`, so that two
/// authenticators' `alice` or `admins` are never one; the authenticators in
/// `[policy] plain_names` name theirs plainly, and several there share those names.
fn caller_name(config: &Config, ty: &str, id: &str) -> Option<(String, String, bool)> {
    let plain: &[String] = config
        .policy
        .as_ref()
        .map_or(&[], |pc| pc.plain_names.as_slice());
    let literal = format!("{ty}::\"{id}\"");
    let Some((authn, rest)) = id.split_once('/') else {
        return match plain {
            [] => Some((
                format!("`{literal}` names no authenticator's caller"),
                format!(
                    "callers are named with their authenticator: `{ty}::\"<authenticator>/{id}\"`; or list the authenticator in `[policy] plain_names`"
                ),
                true,
            )),
            [_] => None,
            several => Some((
                format!(
                    "`{literal}` can be produced by more than one authenticator: {}",
                    several.join(", ")
                ),
                "they are declared equivalent in `[policy] plain_names`; name the authenticator (`<authenticator>/...`) to mean one".into(),
                false,
            )),
        };
    };
    let Some(a) = config.authenticators.iter().find(|a| a.name == authn) else {
        return Some((
            format!("`{literal}`: no authenticator is named `{authn}`"),
            "callers are named `<authenticator>/<id>`, with an authenticator of the config".into(),
            true,
        ));
    };
    if plain.iter().any(|p| p == authn) {
        return Some((
            format!("`{literal}`: `{authn}` names its callers plainly (`[policy] plain_names`)"),
            format!("write `{ty}::\"{rest}\"`"),
            true,
        ));
    }
    use drawbridge_config::{AuthenticatorKind as K, PrincipalKind as P};
    let produces = match (&a.kind, ty) {
        (K::Jwt(j), "User") => j.principal == P::User,
        (K::Jwt(j), "Service") => j.principal == P::Service,
        (K::Jwt(j), "Group") => j.claims.groups.is_some(),
        (K::Oidc(_), "User") => true,
        (K::Oidc(o), "Group") => o.claims.groups.is_some(),
        (K::ApiKey(_), "ApiKey" | "Group") => true,
        (K::Mtls(_), "Service") => true,
        _ => false,
    };
    (!produces).then(|| {
        (
            format!("`{literal}`: authenticator `{authn}` never produces a `{ty}`"),
            "JWT issuers produce users (or services with `principal = \"service\"`) and groups from `claims.groups`; people signing in (`oidc`) produce users, and groups from `claims.groups`; API keys produce `ApiKey`s and groups; client certificates produce services".into(),
            true,
        )
    })
}

/// A query parameter read as two types by two routes cannot have one type in the schema.
fn query_types_agree(config: &Config, errors: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<&str, (drawbridge_config::ValueType, &str)> = HashMap::new();
    for r in config.routes.iter().filter(|r| r.authorizes()) {
        for (q, t) in &r.context.query {
            match seen.get(q.as_str()) {
                Some((t0, other)) if t0 != t => errors.push(Diagnostic {
                    location: r.location.clone(),
                    field: format!("routes `{}`.context.query.{q}", r.name),
                    message: format!(
                        "`{q}` is read as {} here and as {} by route `{other}`",
                        t.as_str(),
                        t0.as_str()
                    ),
                    help: Some("a query parameter has one type in the policy schema".into()),
                }),
                Some(_) => {}
                None => {
                    seen.insert(q, (*t, &r.name));
                }
            }
        }
    }
}

fn resource_fits(
    p: &Policy,
    route: &EntityUid,
    upstream: &EntityUid,
    route_type: &EntityTypeName,
) -> bool {
    match p.resource_constraint() {
        ResourceConstraint::Any => true,
        ResourceConstraint::Eq(u) => u == *route,
        ResourceConstraint::In(u) => u == *route || u == *upstream,
        ResourceConstraint::Is(t) => t == *route_type,
        ResourceConstraint::IsIn(t, u) => t == *route_type && (u == *route || u == *upstream),
    }
}

fn action_fits(p: &Policy, action: &EntityUid, group: Option<&EntityUid>) -> bool {
    match p.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => a == *action,
        ActionConstraint::In(list) => list.iter().any(|a| a == action || Some(a) == group),
    }
}

fn principal_fits(p: &Policy, ptype: &EntityTypeName, types: &Types) -> bool {
    let principal_types = [&types.user, &types.service, &types.api_key];
    match p.principal_constraint() {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Eq(u) | PrincipalConstraint::In(u) => {
            // Only a principal of that very type is, or is in, a principal entity; anything
            // may be in a group.
            !principal_types.contains(&u.type_name()) || u.type_name() == ptype
        }
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => t == *ptype,
    }
}

/// Where `needle` (a policy's own text) starts in `text`, at or after `from`.
fn locate_text(text: &str, needle: &str, from: usize) -> Option<usize> {
    text.get(from..)?.find(needle).map(|i| i + from)
}

/// Offsets, messages and help of a parse error and its companions.
fn flatten(e: &cedar_policy::ParseErrors) -> Vec<(usize, String, Option<String>)> {
    let mut out = Vec::new();
    let mut one = |d: &dyn miette::Diagnostic| {
        let offset = d
            .labels()
            .and_then(|mut l| l.next())
            .map_or(0, |l| l.offset());
        out.push((offset, d.to_string(), d.help().map(|h| h.to_string())));
    };
    one(e);
    if let Some(related) = e.related() {
        for r in related {
            one(r);
        }
    }
    out
}

fn diag(
    file: &Path,
    lines: &Lines,
    offset: usize,
    field: String,
    message: String,
    help: Option<String>,
) -> Diagnostic {
    let (line, column) = lines.locate(offset);
    Diagnostic {
        location: Location {
            file: file.to_path_buf(),
            line,
            column,
        },
        field,
        message,
        help,
    }
}

/// Byte offsets to lines and columns.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        Lines(
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        )
    }

    fn line(&self, offset: usize) -> usize {
        self.locate(offset).0
    }

    fn locate(&self, offset: usize) -> (usize, usize) {
        let line = self.0.partition_point(|&s| s <= offset).max(1);
        (line, offset - self.0[line - 1] + 1)
    }
}

/// Most principal entities kept.
const MAX_PRINCIPALS: usize = 16_384;

/// Most decisions remembered.
const MAX_DECISIONS: usize = 65_536;
