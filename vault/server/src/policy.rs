//! Policy files on disk: reading a policy directory (one `.cedarschema`
//! file and any number of `.cedar` files) and building the decision point
//! from it and the partner registry. The decisions themselves are in the
//! pure `idvault-policies` crate.

use std::path::Path;

use idvault_policies::{
    PartnerFacts, PolicyDiagnostic, PolicyEngine, PolicyFile, PolicySource, compile,
};

use crate::config::PartnerRegistry;

fn problem(file: &Path, message: impl Into<String>) -> Vec<PolicyDiagnostic> {
    vec![PolicyDiagnostic {
        file: file.display().to_string(),
        line: 0,
        column: 0,
        message: message.into(),
    }]
}

/// Reads a policy directory. File names in messages are the paths read.
pub fn read_dir(dir: &Path) -> Result<PolicySource, Vec<PolicyDiagnostic>> {
    let entries = std::fs::read_dir(dir).map_err(|e| problem(dir, e.to_string()))?;
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|text| PolicyFile {
                name: p.display().to_string(),
                text,
            })
            .map_err(|e| problem(p, e.to_string()))
    };
    let mut schema = None;
    let mut policies = Vec::new();
    for p in &paths {
        match p.extension().and_then(|e| e.to_str()) {
            Some("cedarschema") if schema.is_some() => {
                return Err(problem(
                    p,
                    "a second .cedarschema file (one schema per set)",
                ));
            }
            Some("cedarschema") => schema = Some(read(p)?),
            Some("cedar") => policies.push(read(p)?),
            _ => {}
        }
    }
    let schema = schema.ok_or_else(|| problem(dir, "no .cedarschema file"))?;
    Ok(PolicySource { schema, policies })
}

/// What the policies see of each registered partner.
pub fn facts(registry: &PartnerRegistry) -> Vec<PartnerFacts> {
    registry
        .partners()
        .iter()
        .map(|p| PartnerFacts {
            name: p.name.clone(),
            spiffe_id: p.spiffe_id.clone(),
            roles: p.roles.clone(),
            token_domains: p.token_domains.clone(),
            release_purposes: p.release_purposes.clone(),
            release_fields: p
                .release_fields
                .iter()
                .map(|f| f.as_str().to_owned())
                .collect(),
        })
        .collect()
}

/// Compiles the policies of `dir` (the built-in set when `None`) and
/// builds the decision point for `registry`.
pub fn engine(
    dir: Option<&Path>,
    registry: &PartnerRegistry,
) -> Result<PolicyEngine, Vec<PolicyDiagnostic>> {
    let src = match dir {
        Some(d) => read_dir(d)?,
        None => PolicySource::builtin(),
    };
    let compiled = compile(&src)?;
    let engine = PolicyEngine::new(compiled, &facts(registry))
        .map_err(|e| problem(dir.unwrap_or(Path::new("built-in policies")), e.to_string()))?;
    if let Some(text) = undeclared_note(&engine) {
        tracing::warn!("{text}");
    }
    Ok(engine)
}

/// A note naming the actions the set's schema does not declare (a schema
/// copied from an older vault), which are therefore always denied.
pub fn undeclared_note(engine: &PolicyEngine) -> Option<String> {
    let missing = engine.undeclared_actions();
    (!missing.is_empty()).then(|| {
        let names: Vec<&str> = missing.iter().map(|a| a.name()).collect();
        format!(
            "the policy schema does not declare the actions {}: they are denied until the schema declares them and a policy permits them (the shipped schema is policies/default/idvault.cedarschema)",
            names.join(", ")
        )
    })
}

/// Writes the shipped schema and default policies into `dir` (made if
/// missing), leaving files that exist alone.
pub fn write_defaults(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut made = Vec::new();
    for (name, text) in [
        ("idvault.cedarschema", idvault_policies::DEFAULT_SCHEMA),
        ("partners.cedar", idvault_policies::DEFAULT_POLICIES),
    ] {
        let p = dir.join(name);
        if !p.exists() {
            std::fs::write(&p, text)?;
            made.push(p);
        }
    }
    Ok(made)
}

/// Joins diagnostics one per line.
pub fn report(diags: &[PolicyDiagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
