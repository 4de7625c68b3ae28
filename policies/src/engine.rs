//! The Cedar policy decision point.
//!
//! A policy set is one schema file plus any number of policy files. Each
//! file is parsed and validated on its own so every problem is reported
//! with the file, line and column it is at. Policy ids come from each
//! policy's `@id("…")` annotation (required, unique across the set): they
//! are what the audit log records.
//!
//! Decisions are made against entities built once per engine from the
//! partner registry (each partner is `in` its roles), so a decision costs
//! one context, one request and one evaluation.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::{Action, Role};

/// The shipped schema (`policies/default/idvault.cedarschema`).
pub const DEFAULT_SCHEMA: &str = include_str!("../default/idvault.cedarschema");
/// The shipped policy set (`policies/default/partners.cedar`).
pub const DEFAULT_POLICIES: &str = include_str!("../default/partners.cedar");

/// One file of a policy set: its name (for messages) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    /// File name or path, as it should appear in messages.
    pub name: String,
    /// Contents.
    pub text: String,
}

/// A policy set's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    /// The `.cedarschema` file.
    pub schema: PolicyFile,
    /// The `.cedar` files.
    pub policies: Vec<PolicyFile>,
}

impl PolicySource {
    /// The shipped schema and default policies.
    pub fn builtin() -> Self {
        Self {
            schema: PolicyFile {
                name: "idvault.cedarschema".into(),
                text: DEFAULT_SCHEMA.into(),
            },
            policies: vec![PolicyFile {
                name: "partners.cedar".into(),
                text: DEFAULT_POLICIES.into(),
            }],
        }
    }
}

/// A problem in a policy set, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDiagnostic {
    /// File name.
    pub file: String,
    /// 1-based line (0 when the problem has no location).
    pub line: usize,
    /// 1-based column (0 when the problem has no location).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for PolicyDiagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Byte offsets where each top-level statement of a policy file starts
/// (its first annotation or keyword), skipping comments and strings.
fn statement_starts(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut starts = Vec::new();
    let mut expecting = true;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while b.get(i).is_some_and(|&c| c != b'\n') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if expecting {
            starts.push(i);
            expecting = false;
        }
        if c == b'"' {
            i += 1;
            while let Some(&c) = b.get(i) {
                i += if c == b'\\' { 2 } else { 1 };
                if c == b'"' {
                    break;
                }
            }
            continue;
        }
        if c == b';' {
            expecting = true;
        }
        i += 1;
    }
    starts
}

/// Turns a Cedar diagnostic into located messages (one per label, or one
/// without a location).
fn diagnostics(file: &PolicyFile, d: &dyn Diagnostic) -> Vec<PolicyDiagnostic> {
    let mut message = d.to_string();
    if let Some(help) = d.help() {
        message = format!("{message} ({help})");
    }
    let labels: Vec<_> = d.labels().map(|l| l.collect()).unwrap_or_default();
    if labels.is_empty() {
        // Some errors wrap others that carry the location.
        let related: Vec<PolicyDiagnostic> = d
            .related()
            .into_iter()
            .flatten()
            .flat_map(|r| diagnostics(file, r))
            .collect();
        if !related.is_empty() {
            return related;
        }
        return vec![PolicyDiagnostic {
            file: file.name.clone(),
            line: 0,
            column: 0,
            message,
        }];
    }
    let mut out: Vec<PolicyDiagnostic> = labels
        .iter()
        .map(|l: &miette::LabeledSpan| {
            let (line, column) = line_col(&file.text, l.offset());
            PolicyDiagnostic {
                file: file.name.clone(),
                line,
                column,
                message: message.clone(),
            }
        })
        .collect();
    // A parse failure lists its second and later errors as related ones.
    out.extend(
        d.related()
            .into_iter()
            .flatten()
            .flat_map(|r| diagnostics(file, r)),
    );
    out
}

/// A validated policy set and its schema.
#[derive(Debug, Clone)]
pub struct CompiledPolicies {
    set: PolicySet,
    schema: Schema,
    ids: Vec<String>,
}

impl CompiledPolicies {
    /// The policy ids, in file order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }
}

/// Parses and validates a policy set: the schema, then each policy file
/// against it. Every problem found is returned, located.
pub fn compile(src: &PolicySource) -> Result<CompiledPolicies, Vec<PolicyDiagnostic>> {
    let schema = match Schema::from_cedarschema_str(&src.schema.text) {
        Ok((s, _warnings)) => s,
        Err(e) => return Err(diagnostics(&src.schema, &e)),
    };
    let validator = Validator::new(schema.clone());
    let mut errors = Vec::new();
    let mut set = PolicySet::new();
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    if src.policies.is_empty() {
        errors.push(PolicyDiagnostic {
            file: src.schema.name.clone(),
            line: 0,
            column: 0,
            message: "no .cedar policy files: every request would be denied".into(),
        });
    }
    for file in &src.policies {
        let parsed = match PolicySet::from_str(&file.text) {
            Ok(p) => p,
            Err(e) => {
                errors.extend(diagnostics(file, &e));
                continue;
            }
        };
        let result = validator.validate(&parsed, ValidationMode::Strict);
        // Name policies by their @id in messages, and report one problem
        // once per place even when the validator repeats it per action.
        let names: Vec<(String, String)> = parsed
            .policies()
            .filter_map(|p| {
                Some((
                    format!("`{}`", p.id()),
                    format!("`{}`", p.annotation("id")?),
                ))
            })
            .collect();
        let mut places = HashSet::new();
        for e in result.validation_errors() {
            for mut d in diagnostics(file, e) {
                for (auto, id) in &names {
                    d.message = d.message.replace(auto, id);
                }
                // The validator repeats one problem for every action a
                // policy covers, with the action in the message: keep the
                // first per place.
                if places.insert((d.line, d.column)) {
                    errors.push(d);
                }
            }
        }
        if parsed.templates().next().is_some() {
            errors.push(PolicyDiagnostic {
                file: file.name.clone(),
                line: 0,
                column: 0,
                message: "policy templates (?principal, ?resource) are not supported".into(),
            });
        }
        let starts = statement_starts(&file.text);
        for p in parsed.policies() {
            // Parsed policies are numbered `policyN` in file order.
            let at = p
                .id()
                .to_string()
                .strip_prefix("policy")
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| starts.get(n).copied())
                .map_or((0, 0), |o| line_col(&file.text, o));
            let located = |message: String| PolicyDiagnostic {
                file: file.name.clone(),
                line: at.0,
                column: at.1,
                message,
            };
            let Some(id) = p.annotation("id") else {
                errors.push(located(
                    "policy has no @id(\"…\") annotation (the audit log names policies by id)"
                        .into(),
                ));
                continue;
            };
            if id.is_empty() || !seen.insert(id.to_owned()) {
                errors.push(located(format!(
                    "policy id \"{id}\" is empty or used twice"
                )));
                continue;
            }
            ids.push(id.to_owned());
            if let Err(e) = set.add(p.new_id(PolicyId::new(id))) {
                errors.push(located(e.to_string()));
            }
        }
    }
    if errors.is_empty() {
        Ok(CompiledPolicies { set, schema, ids })
    } else {
        Err(errors)
    }
}

/// What the registry says about a partner, as the policies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerFacts {
    /// Partner name (the entity id).
    pub name: String,
    /// SPIFFE id.
    pub spiffe_id: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Token domains.
    pub token_domains: Vec<String>,
    /// Purposes it may receive with consent.
    pub release_purposes: Vec<String>,
    /// Fields it may receive with consent.
    pub release_fields: Vec<String>,
}

/// What an action is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// The vault as a whole.
    Vault,
    /// One subject (its id).
    Subject(&'a str),
    /// One token domain.
    TokenDomain(&'a str),
}

/// The request's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestContext<'a> {
    /// Purpose code ("" when none).
    pub purpose: &'a str,
    /// Field names the request touches.
    pub fields: &'a [&'a str],
    /// Whether a verified consent backs the request.
    pub consent_present: bool,
    /// Unix seconds.
    pub now: i64,
}

/// A decision and the policies that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed?
    pub allowed: bool,
    /// Ids of the determining policies: the permits that allowed it, or the
    /// forbids that denied it; empty for a default deny.
    pub policies: Vec<String>,
}

impl Decision {
    /// The audit text: `policy=a,b`, or `policy=default-deny`.
    pub fn audit_text(&self) -> String {
        if self.policies.is_empty() {
            "policy=default-deny".into()
        } else {
            format!("policy={}", self.policies.join(","))
        }
    }

    fn deny() -> Self {
        Self {
            allowed: false,
            policies: Vec::new(),
        }
    }
}

fn type_name(name: &str) -> EntityTypeName {
    // The names are constants of the shipped schema.
    #[allow(clippy::expect_used)]
    EntityTypeName::from_str(name).expect("valid entity type name")
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

fn string_set(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(
        items
            .iter()
            .map(|s| RestrictedExpression::new_string(s.clone())),
    )
}

/// Whether `policy` could apply to `partner` (holding `roles`) doing
/// `action`: false only when its scope rules it out for certain. With no
/// action groups in the schema, `action in [...]` is list membership; with
/// groups, any `in` is kept. Slicing by scope cannot change a decision,
/// since a policy whose scope does not match is never satisfied.
fn may_apply(
    policy: &cedar_policy::Policy,
    partner: &EntityUid,
    roles: &HashSet<EntityUid>,
    action: &EntityUid,
    has_action_groups: bool,
) -> bool {
    use cedar_policy::{ActionConstraint, PrincipalConstraint};
    let principal_ok = match policy.principal_constraint() {
        PrincipalConstraint::Eq(u) => &u == partner,
        PrincipalConstraint::In(u) | PrincipalConstraint::IsIn(_, u) => {
            &u == partner || roles.contains(&u)
        }
        PrincipalConstraint::Any | PrincipalConstraint::Is(_) => true,
    };
    let action_ok = match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(u) => &u == action,
        ActionConstraint::In(list) => has_action_groups || list.contains(action),
    };
    principal_ok && action_ok
}

/// The policy decision point: a compiled policy set and the registry's
/// partners as entities.
#[derive(Debug)]
pub struct PolicyEngine {
    policies: CompiledPolicies,
    entities: Entities,
    partners: HashMap<String, EntityUid>,
    actions: HashMap<Action, EntityUid>,
    /// Actions the schema does not declare: always denied.
    undeclared: Vec<Action>,
    /// For each (partner, action), the policies that could apply: a
    /// decision evaluates one or two policies instead of the whole set.
    slices: HashMap<String, HashMap<Action, PolicySet>>,
    /// The context of requests without purpose or fields, for the current
    /// second (most decisions): built once, cloned after.
    plain_context: std::sync::Mutex<Option<(i64, Context)>>,
    vault: EntityUid,
    subject_type: EntityTypeName,
    domain_type: EntityTypeName,
    authorizer: Authorizer,
}

/// Building the engine's entities failed (a registry value the schema
/// does not accept).
#[derive(Debug, thiserror::Error)]
#[error("partner registry does not fit the policy schema: {0}")]
pub struct EntityError(String);

impl PolicyEngine {
    /// An engine for `policies` and the registry's `partners`.
    pub fn new(policies: CompiledPolicies, partners: &[PartnerFacts]) -> Result<Self, EntityError> {
        let partner_type = type_name("IdVault::Partner");
        let role_type = type_name("IdVault::Role");
        let action_type = type_name("IdVault::Action");
        let mut entities = Vec::new();
        let mut uids = HashMap::new();
        let mut roles = HashSet::new();
        for p in partners {
            let id = uid(&partner_type, &p.name);
            let parents: HashSet<EntityUid> = p
                .roles
                .iter()
                .map(|r| {
                    roles.insert(*r);
                    uid(&role_type, r.name())
                })
                .collect();
            let attrs = HashMap::from([
                (
                    "spiffe_id".to_owned(),
                    RestrictedExpression::new_string(p.spiffe_id.clone()),
                ),
                ("token_domains".to_owned(), string_set(&p.token_domains)),
                (
                    "release_purposes".to_owned(),
                    string_set(&p.release_purposes),
                ),
                ("release_fields".to_owned(), string_set(&p.release_fields)),
            ]);
            entities.push(
                Entity::new(id.clone(), attrs, parents).map_err(|e| EntityError(e.to_string()))?,
            );
            uids.insert(p.name.clone(), id);
        }
        for r in roles {
            entities.push(Entity::new_no_attrs(
                uid(&role_type, r.name()),
                HashSet::new(),
            ));
        }
        let entities = Entities::from_entities(entities, Some(&policies.schema))
            .map_err(|e| EntityError(e.to_string()))?;
        // An operator's schema written for an older vault may not declare
        // actions added since: those are left out, so every request for
        // them is denied (default deny) until the schema and a policy
        // permit them. `undeclared_actions` lets the vault say so.
        let declared: HashSet<EntityUid> = policies.schema.actions().cloned().collect();
        let (actions, undeclared): (HashMap<Action, EntityUid>, Vec<Action>) = {
            let mut m = HashMap::new();
            let mut missing = Vec::new();
            for a in Action::ALL {
                let u = uid(&action_type, a.name());
                if declared.contains(&u) {
                    m.insert(*a, u);
                } else {
                    missing.push(*a);
                }
            }
            (m, missing)
        };
        // The vault builds requests without validating them per call: check
        // once here that what it sends fits the schema's context and types
        // for every action, so a schema edit cannot make policies error at
        // run time (an erroring forbid would otherwise be skipped).
        let probe = uid(&partner_type, "schema-check");
        for (action, action_uid) in &actions {
            let resource = match action {
                Action::ReleaseConsented => uid(&type_name("IdVault::Subject"), "schema-check"),
                _ => uid(&type_name("IdVault::Vault"), "vault"),
            };
            let context = Self::context(&RequestContext::default())
                .ok_or_else(|| EntityError("cannot build a request context".into()))?;
            cedar_policy::Request::new(
                probe.clone(),
                action_uid.clone(),
                resource,
                context,
                Some(&policies.schema),
            )
            .map_err(|e| {
                EntityError(format!(
                    "the schema does not accept the vault's {} requests: {e}",
                    action.name()
                ))
            })?;
        }
        let has_action_groups = policies.schema.action_groups().next().is_some();
        let mut slices = HashMap::new();
        for p in partners {
            let Some(me) = uids.get(&p.name) else {
                continue;
            };
            let roles: HashSet<EntityUid> =
                p.roles.iter().map(|r| uid(&role_type, r.name())).collect();
            for (action, action_uid) in &actions {
                let mut slice = PolicySet::new();
                for policy in policies.set.policies() {
                    if may_apply(policy, me, &roles, action_uid, has_action_groups) {
                        slice
                            .add(policy.clone())
                            .map_err(|e| EntityError(e.to_string()))?;
                    }
                }
                slices
                    .entry(p.name.clone())
                    .or_insert_with(HashMap::new)
                    .insert(*action, slice);
            }
        }
        Ok(Self {
            policies,
            entities,
            partners: uids,
            actions,
            undeclared,
            slices,
            plain_context: std::sync::Mutex::new(None),
            vault: uid(&type_name("IdVault::Vault"), "vault"),
            subject_type: type_name("IdVault::Subject"),
            domain_type: type_name("IdVault::TokenDomain"),
            authorizer: Authorizer::new(),
        })
    }

    fn context(ctx: &RequestContext<'_>) -> Option<Context> {
        Context::from_pairs([
            (
                "purpose".to_owned(),
                RestrictedExpression::new_string(ctx.purpose.to_owned()),
            ),
            (
                "fields".to_owned(),
                RestrictedExpression::new_set(
                    ctx.fields
                        .iter()
                        .map(|f| RestrictedExpression::new_string((*f).to_owned())),
                ),
            ),
            (
                "consent_present".to_owned(),
                RestrictedExpression::new_bool(ctx.consent_present),
            ),
            ("now".to_owned(), RestrictedExpression::new_long(ctx.now)),
        ])
        .ok()
    }

    /// Actions the schema does not declare (a schema from an older
    /// vault): every request for them is denied.
    pub fn undeclared_actions(&self) -> &[Action] {
        &self.undeclared
    }

    /// The policy ids in force.
    pub fn policy_ids(&self) -> &[String] {
        self.policies.ids()
    }

    /// Decides whether `partner` may perform `action` on `resource` in
    /// `ctx`. Default deny: an unknown partner, or no permitting policy,
    /// is a deny.
    pub fn decide(
        &self,
        partner: &str,
        action: Action,
        resource: Resource<'_>,
        ctx: &RequestContext<'_>,
    ) -> Decision {
        match self.slices.get(partner).and_then(|s| s.get(&action)) {
            Some(slice) => self.decide_with(slice, partner, action, resource, ctx),
            None => Decision::deny(),
        }
    }

    /// [`Self::decide`] against a given policy set.
    fn decide_with(
        &self,
        set: &PolicySet,
        partner: &str,
        action: Action,
        resource: Resource<'_>,
        ctx: &RequestContext<'_>,
    ) -> Decision {
        let (Some(principal), Some(action)) =
            (self.partners.get(partner), self.actions.get(&action))
        else {
            return Decision::deny();
        };
        let resource = match resource {
            Resource::Vault => self.vault.clone(),
            Resource::Subject(id) => uid(&self.subject_type, id),
            Resource::TokenDomain(d) => uid(&self.domain_type, d),
        };
        let plain = ctx.purpose.is_empty() && ctx.fields.is_empty() && !ctx.consent_present;
        let cached = plain
            .then(|| {
                self.plain_context.lock().ok().and_then(|c| {
                    c.as_ref()
                        .filter(|(t, _)| *t == ctx.now)
                        .map(|(_, c)| c.clone())
                })
            })
            .flatten();
        let context = match cached {
            Some(c) => Some(c),
            None => Self::context(ctx).inspect(|c| {
                if plain && let Ok(mut slot) = self.plain_context.lock() {
                    *slot = Some((ctx.now, c.clone()));
                }
            }),
        };
        let Some(context) = context else {
            return Decision::deny();
        };
        // The request is built by this engine from schema-shaped parts, so
        // it is not validated against the schema per call (that is the
        // policies' job at load).
        let Ok(request) =
            cedar_policy::Request::new(principal.clone(), action.clone(), resource, context, None)
        else {
            return Decision::deny();
        };
        let response = self.authorizer.is_authorized(&request, set, &self.entities);
        // Cedar skips a policy whose evaluation errors: a broken forbid
        // would then let the request through. Fail closed instead, naming
        // the policies that errored.
        let errored: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                    format!("error:{}", e.policy_id())
                }
            })
            .collect();
        if !errored.is_empty() {
            return Decision {
                allowed: false,
                policies: errored,
            };
        }
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        // Sorted: the audit text must not depend on hash order.
        policies.sort();
        Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            policies,
        }
    }
}

/// Decisions per second on one thread with `policies`, over a fixed mix:
/// role-granted actions on the vault, releases with consent (allowed and
/// refused by allowance), and default denies. Returns `(decisions/s,
/// allowed fraction)`.
pub fn bench_decisions(policies: CompiledPolicies, n: usize) -> Result<(f64, f64), EntityError> {
    let all_roles: Vec<Role> = Role::ALL_NAMES
        .iter()
        .filter_map(|r| Role::parse(r).ok())
        .collect();
    let partners = [
        PartnerFacts {
            name: "partner-a".into(),
            spiffe_id: "spiffe://idvault.dev/partner/partner-a".into(),
            roles: all_roles,
            token_domains: vec!["logs".into()],
            release_purposes: vec!["kyc".into(), "account_opening".into()],
            release_fields: ["given_name", "family_name", "date_of_birth", "email"]
                .map(String::from)
                .to_vec(),
        },
        PartnerFacts {
            name: "partner-b".into(),
            spiffe_id: "spiffe://idvault.dev/partner/partner-b".into(),
            roles: vec![Role::SubjectsVerify],
            token_domains: vec![],
            release_purposes: vec![],
            release_fields: vec![],
        },
    ];
    let engine = PolicyEngine::new(policies, &partners)?;
    let subject = "6f1c2b9e-8a41-4d3c-9b7e-2a5f0c1d3e4f";
    let fields: &[&str] = &["given_name", "email"];
    let cases: [(&str, Action, Resource<'_>, RequestContext<'_>); 6] = [
        (
            "partner-a",
            Action::CreateSubject,
            Resource::Vault,
            RequestContext::default(),
        ),
        (
            "partner-a",
            Action::MatchSubjects,
            Resource::Vault,
            RequestContext::default(),
        ),
        (
            "partner-a",
            Action::ReleaseConsented,
            Resource::Subject(subject),
            RequestContext {
                purpose: "kyc",
                fields,
                consent_present: true,
                now: 1_795_000_000,
            },
        ),
        (
            "partner-a",
            Action::ReleaseConsented,
            Resource::Subject(subject),
            RequestContext {
                purpose: "marketing",
                fields,
                consent_present: true,
                now: 1_795_000_000,
            },
        ),
        (
            "partner-b",
            Action::DeleteSubject,
            Resource::Vault,
            RequestContext::default(),
        ),
        (
            "partner-b",
            Action::VerifySubjectChain,
            Resource::Subject(subject),
            RequestContext::default(),
        ),
    ];
    let n = n.max(1);
    let mut allowed = 0usize;
    #[allow(clippy::disallowed_methods)] // a benchmark measures wall time
    let t = std::time::Instant::now();
    for (p, a, r, c) in cases.iter().cycle().take(n) {
        if std::hint::black_box(engine.decide(p, *a, *r, c)).allowed {
            allowed += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    Ok((n as f64 / secs, allowed as f64 / n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(src: &PolicySource) -> PolicyEngine {
        let partners = [
            PartnerFacts {
                name: "a".into(),
                spiffe_id: "spiffe://t/partner/a".into(),
                roles: vec![
                    Role::SubjectsWrite,
                    Role::ConsentRelease,
                    Role::EventsPublish,
                    Role::CommandsReceive,
                ],
                token_domains: vec![],
                release_purposes: vec!["kyc".into()],
                release_fields: vec!["given_name".into(), "email".into()],
            },
            PartnerFacts {
                name: "b".into(),
                spiffe_id: "spiffe://t/partner/b".into(),
                roles: vec![Role::SubjectsVerify],
                token_domains: vec![],
                release_purposes: vec![],
                release_fields: vec![],
            },
        ];
        PolicyEngine::new(compile(src).unwrap(), &partners).unwrap()
    }

    fn ctx() -> RequestContext<'static> {
        RequestContext {
            now: 1_795_000_000,
            ..RequestContext::default()
        }
    }

    #[test]
    fn default_set_compiles_and_denies_by_default() {
        let e = engine(&PolicySource::builtin());
        assert!(e.policy_ids().contains(&"subjects-write".to_owned()));
        let d = e.decide("a", Action::CreateSubject, Resource::Vault, &ctx());
        assert_eq!(
            d,
            Decision {
                allowed: true,
                policies: vec!["subjects-write".into()]
            }
        );
        assert_eq!(d.audit_text(), "policy=subjects-write");
        let d = e.decide("b", Action::CreateSubject, Resource::Vault, &ctx());
        assert!(!d.allowed);
        assert_eq!(d.audit_text(), "policy=default-deny");
        assert!(
            !e.decide("nobody", Action::CreateSubject, Resource::Vault, &ctx())
                .allowed
        );
    }

    #[test]
    fn release_needs_consent_purpose_and_fields() {
        let e = engine(&PolicySource::builtin());
        let with = |purpose, fields: &'static [&'static str], consent| RequestContext {
            purpose,
            fields,
            consent_present: consent,
            now: 1,
        };
        let s = Resource::Subject("6f1c2b9e-8a41-4d3c-9b7e-2a5f0c1d3e4f");
        let r = Action::ReleaseConsented;
        assert!(e.decide("a", r, s, &with("kyc", &["email"], true)).allowed);
        assert!(!e.decide("a", r, s, &with("kyc", &["email"], false)).allowed);
        assert!(!e.decide("a", r, s, &with("ads", &["email"], true)).allowed);
        assert!(
            !e.decide("a", r, s, &with("kyc", &["national_id"], true))
                .allowed
        );
        assert!(
            !e.decide("a", r, Resource::Vault, &with("kyc", &["email"], true))
                .allowed
        );
        assert!(!e.decide("b", r, s, &with("kyc", &["email"], true)).allowed);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let mut src = PolicySource::builtin();
        src.policies.push(PolicyFile {
            name: "extra.cedar".into(),
            text:
                "@id(\"x\")\npermit (principal, action, resource)\nwhen { principal.nope == 1 };\n"
                    .into(),
        });
        let errs = compile(&src).unwrap_err();
        assert!(
            errs.iter().any(|e| e.file == "extra.cedar" && e.line == 3),
            "{errs:?}"
        );
        let mut src = PolicySource::builtin();
        src.policies.push(PolicyFile {
            name: "syntax.cedar".into(),
            text: "\n\n  permit (principal, action, resource) when {".into(),
        });
        let errs = compile(&src).unwrap_err();
        assert!(
            errs.iter().any(|e| e.file == "syntax.cedar" && e.line == 3),
            "{errs:?}"
        );
        let mut src = PolicySource::builtin();
        src.policies.push(PolicyFile {
            name: "dup.cedar".into(),
            text: "@id(\"subjects-write\")\npermit (principal, action, resource);".into(),
        });
        let errs = compile(&src).unwrap_err();
        assert!(
            errs[0].to_string().starts_with("dup.cedar:1:1:"),
            "{errs:?}"
        );
        let mut src = PolicySource::builtin();
        src.schema.text.push_str("\nentity Broken {");
        let errs = compile(&src).unwrap_err();
        assert_eq!(errs[0].file, "idvault.cedarschema");
        assert!(errs[0].line > 1, "{errs:?}");
    }

    /// Slicing by scope never changes a decision: every partner, action,
    /// resource and context gives the same answer as the whole set.
    #[test]
    fn slices_decide_like_the_whole_set() {
        let mut src = PolicySource::builtin();
        src.policies.push(PolicyFile {
            name: "extra.cedar".into(),
            text: "@id(\"freeze-a\")\nforbid (principal == IdVault::Partner::\"a\", action in [IdVault::Action::\"Match\", IdVault::Action::\"CreateSubject\"], resource);\n@id(\"any-verify\")\npermit (principal, action == IdVault::Action::\"VerifySubjectChain\", resource is IdVault::Subject);\n".into(),
        });
        let e = engine(&src);
        let ctxs = [
            ctx(),
            RequestContext {
                purpose: "kyc",
                fields: &["email"],
                consent_present: true,
                now: 1,
            },
        ];
        let mut checked = 0;
        for p in ["a", "b"] {
            for a in Action::ALL {
                for r in [
                    Resource::Vault,
                    Resource::Subject("s"),
                    Resource::TokenDomain("logs"),
                ] {
                    for c in &ctxs {
                        let sliced = e.decide(p, *a, r, c);
                        let whole = e.decide_with(&e.policies.set, p, *a, r, c);
                        assert_eq!(sliced, whole, "{p} {a:?} {r:?} {c:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 2 * Action::ALL.len() * 3 * 2);
    }

    /// A forbid whose evaluation errors denies (fail closed) and is named.
    #[test]
    fn actions_an_older_schema_lacks_are_denied() {
        // A schema copied before PublishEvent and ReceiveCommands existed.
        let schema = DEFAULT_SCHEMA.replace(",\n         PublishEvent, ReceiveCommands", "");
        assert_ne!(schema, DEFAULT_SCHEMA);
        let policies = DEFAULT_POLICIES
            .split("@id(")
            .filter(|p| !p.contains("PublishEvent") && !p.contains("ReceiveCommands"))
            .collect::<Vec<_>>()
            .join("@id(");
        let src = PolicySource {
            schema: PolicyFile {
                name: "old.cedarschema".into(),
                text: schema,
            },
            policies: vec![PolicyFile {
                name: "old.cedar".into(),
                text: policies,
            }],
        };
        let current = engine(&PolicySource::builtin());
        assert!(current.undeclared_actions().is_empty());
        for a in [Action::PublishEvent, Action::ReceiveCommands] {
            let d = current.decide("a", a, Resource::Vault, &ctx());
            assert!(d.allowed, "{a} with the shipped schema and policies");
        }
        let e = engine(&src);
        assert_eq!(
            e.undeclared_actions(),
            [Action::PublishEvent, Action::ReceiveCommands]
        );
        for a in [Action::PublishEvent, Action::ReceiveCommands] {
            let d = e.decide("a", a, Resource::Vault, &ctx());
            assert!(!d.allowed);
            assert_eq!(d.audit_text(), "policy=default-deny");
        }
        assert!(
            e.decide("a", Action::CreateSubject, Resource::Vault, &ctx())
                .allowed
        );
    }

    #[test]
    fn erroring_policy_fails_closed() {
        let mut src = PolicySource::builtin();
        // Passes validation, but overflows at run time.
        src.policies.push(PolicyFile {
            name: "overflow.cedar".into(),
            text: "@id(\"overflow\")\nforbid (principal, action, resource) when { context.now * 9223372036854775807 > 0 };\n".into(),
        });
        let e = engine(&src);
        let d = e.decide("a", Action::CreateSubject, Resource::Vault, &ctx());
        assert_eq!(
            d,
            Decision {
                allowed: false,
                policies: vec!["error:overflow".into()]
            }
        );
    }

    #[test]
    fn forbid_wins_and_is_named() {
        let mut src = PolicySource::builtin();
        src.policies.push(PolicyFile {
            name: "freeze.cedar".into(),
            text: "@id(\"freeze-a\")\nforbid (principal == IdVault::Partner::\"a\", action, resource);\n"
                .into(),
        });
        let e = engine(&src);
        let d = e.decide("a", Action::CreateSubject, Resource::Vault, &ctx());
        assert_eq!(
            d,
            Decision {
                allowed: false,
                policies: vec!["freeze-a".into()]
            }
        );
    }
}
