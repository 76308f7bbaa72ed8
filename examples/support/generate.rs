//! Writes synthetic manifest repositories for benchmarks: N resources spread over projects,
//! each with variable groups, services (from images and from source) and routes (exact and
//! wildcard hosts, path prefixes).

use std::fmt::Write as _;
use std::path::Path;

/// Resources per project: 1 project, 2 variable groups, 11 services, 11 routes.
pub const PER_PROJECT: usize = 25;
const SERVICES: usize = 11;

/// Writes a repository of about `resources` resources (rounded up to whole projects) under
/// `dir`, one directory per project. Returns the number of resources written.
pub fn write_repo(dir: &Path, resources: usize) -> std::io::Result<usize> {
    let projects = resources.div_ceil(PER_PROJECT).max(1);
    for p in 0..projects {
        let name = format!("p{p:05}");
        let root = dir.join(&name);
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("project.yaml"), project(&name))?;
        std::fs::write(root.join("variables.yaml"), variable_groups(&name))?;
        std::fs::write(root.join("services.yaml"), services(&name, 0))?;
        std::fs::write(root.join("routes.yaml"), routes(&name))?;
    }
    Ok(projects * PER_PROJECT)
}

fn header(kind: &str, name: &str, project: &str) -> String {
    format!(
        "apiVersion: meshploy.dev/v1\nkind: {kind}\nmetadata:\n  name: {name}\n  project: {project}\n"
    )
}

fn project(name: &str) -> String {
    format!(
        "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: {name}\nspec:\n  description: Synthetic project {name}\n"
    )
}

fn variable_groups(project: &str) -> String {
    let mut out = String::new();
    for group in ["common", "extra"] {
        out.push_str("---\n");
        out.push_str(&header("VariableGroup", group, project));
        out.push_str("spec:\n  variables:\n");
        for i in 0..5 {
            let _ = writeln!(out, "    {}_{i}: value-{project}-{i}", group.to_uppercase());
        }
    }
    out
}

/// Changes about `percent`% of the resources written by [`write_repo`] (the replicas of
/// whole projects' services, first projects first). Returns how many resources changed.
pub fn change_percent(dir: &Path, resources: usize, percent: f64) -> std::io::Result<usize> {
    let wanted = (resources as f64 * percent / 100.0).round() as usize;
    let projects = wanted.div_ceil(SERVICES);
    for p in 0..projects {
        let name = format!("p{p:05}");
        std::fs::write(dir.join(&name).join("services.yaml"), services(&name, 10))?;
    }
    Ok(projects * SERVICES)
}

fn services(project: &str, extra_replicas: usize) -> String {
    let mut out = String::new();
    for s in 0..SERVICES {
        out.push_str("---\n");
        out.push_str(&header("Service", &format!("svc{s}"), project));
        out.push_str("spec:\n");
        if s % 3 == 0 {
            let _ = write!(
                out,
                "  source:\n    git: https://git.example.com/{project}/svc{s}.git\n    ref: main\n  build:\n    strategy: command\n    command: make build\n  command: ./bin/svc{s}\n"
            );
        } else {
            let _ = writeln!(
                out,
                "  image: registry.example.com/{project}/svc{s}:1.0.{s}"
            );
        }
        let _ = write!(
            out,
            "  port: {}\n  replicas: {}\n  resources:\n    cpu: 250m\n    memory: 128Mi\n  env:\n    SERVICE_NAME: svc{s}\n    WORKERS: 4\n  variableGroups: [common, extra]\n  healthCheck:\n    path: /healthz\n",
            8000 + s,
            1 + s % 3 + extra_replicas
        );
    }
    out
}

fn routes(project: &str) -> String {
    let mut out = String::new();
    for r in 0..SERVICES {
        out.push_str("---\n");
        out.push_str(&header("Route", &format!("route{r}"), project));
        let host = if r == 0 {
            format!("\"*.{project}.example.com\"")
        } else {
            format!("{project}.example.com")
        };
        let _ = write!(
            out,
            "spec:\n  host: {host}\n  path: /svc{r}\n  service: svc{r}\n"
        );
        if r % 2 == 1 {
            out.push_str("  stripPrefix: true\n");
        }
    }
    out
}
