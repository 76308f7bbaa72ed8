//! A pull request's preview environment as a value: its manifests copied into projects of
//! their own (`<project>-pr-<n>`), owned by the source `<source>#pr-<n>`, with every route's
//! host rewritten by the source's template and every service built from this repository
//! pinned to the pull request's head. A preview runs the pull request's code, so its
//! variable groups keep no production secret unless the source names the group for
//! previews ([`Secrets`]), and it is made only for authors the source trusts ([`Trust`]).
//! No IO: [`crate::previews`] applies and destroys it.

use std::collections::BTreeMap;
use std::time::Duration;

use reconciler::apply::Copies;
use schema::model::{Spec, Workload};
use schema::{Address, DesiredState, Kind, Resource};

use crate::client::PullRequest;

/// A source's previews, as `previews:` in the serve configuration sets them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The host of a route in a preview, from `{number}` and the route's `{host}`.
    pub host: Template,
    /// How long a preview lives after its last push.
    pub ttl: Duration,
    /// How many previews one source runs at once.
    pub max_active: u32,
    /// Whether pull requests from forks get one (their code is then built and run).
    pub allow_forks: bool,
    /// `https` or `http`, for the URLs a comment lists.
    pub scheme: String,
    /// The variable groups, by name, whose copies in a preview get secrets; every other
    /// group's copy has none.
    pub secrets: BTreeMap<String, Secrets>,
    /// Whose pull requests are built and run.
    pub trust: Trust,
}

/// Which secrets a variable group's copy in a preview has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secrets {
    /// The group's own, as production has them: an explicit opt-in, since the pull
    /// request's code can read them.
    Inherit,
    /// None of its own; the services that use it also use this preview-only group of the
    /// same project, after it (so its values win). The group is declared like any other and
    /// no production service uses it.
    From(String),
}

/// Whose pull requests get a preview, which builds and runs their code: authors whose
/// association with the repository is listed (GitHub's `author_association`, Gitea's
/// equivalent), or any pull request carrying the label, which only maintainers can set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trust {
    pub associations: Vec<String>,
    pub label: String,
}

impl Default for Trust {
    fn default() -> Trust {
        Trust {
            associations: ["OWNER", "MEMBER", "COLLABORATOR"]
                .map(String::from)
                .to_vec(),
            label: "preview-approved".into(),
        }
    }
}

impl Trust {
    /// Whether `pull` may be built and run: a trusted author, or approved by the label.
    pub fn trusts(&self, pull: &PullRequest) -> bool {
        self.associations.contains(&pull.association) || pull.labels.contains(&self.label)
    }

    /// Why `pull` gets no preview yet, and how a maintainer approves it.
    pub fn untrusted(&self, pull: &PullRequest) -> String {
        format!(
            "its author `{}` ({}) is not trusted to have code built and run here (trusted: {}); a maintainer approves this pull request by adding the label `{}`, and its preview is made",
            pull.author,
            pull.association,
            self.associations.join(", "),
            self.label
        )
    }
}

/// A host template such as `pr-{number}.{host}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    /// Refuses a template without `{number}` (every pull request's hosts would collide) or
    /// with another `{...}` placeholder.
    pub fn parse(text: &str) -> Result<Template, String> {
        if !text.contains("{number}") {
            return Err(format!(
                "`{text}` has no `{{number}}`, so every pull request's preview would have the same hosts; write it like `pr-{{number}}.{{host}}`"
            ));
        }
        let rest = text.replace("{number}", "").replace("{host}", "");
        if rest.contains('{') || rest.contains('}') {
            return Err(format!(
                "`{text}` has a placeholder other than `{{number}}` and `{{host}}`"
            ));
        }
        Ok(Template(text.to_owned()))
    }

    /// The preview's host for `host`. A wildcard stays the leftmost label:
    /// `*.shop.example.com` becomes `*.pr-7.shop.example.com`.
    pub fn host(&self, number: u64, host: &str) -> String {
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(rest) => ("*.", rest),
            None => ("", host),
        };
        let made = self
            .0
            .replace("{number}", &number.to_string())
            .replace("{host}", host);
        format!("{wildcard}{made}")
    }
}

/// The project of a pull request's preview that copies `project`.
pub fn project(project: &str, number: u64) -> String {
    format!("{project}-pr-{number}")
}

/// The source that owns a pull request's preview.
pub fn owner(source: &str, number: u64) -> String {
    format!("{source}#pr-{number}")
}

/// What a pull request's preview applies.
#[derive(Clone, Debug)]
pub struct Preview {
    pub state: DesiredState,
    /// Each preview project, with the project it copies (whose place its secrets are sealed
    /// for).
    pub copies: Copies,
    /// Where its routes serve, as links (wildcard hosts are left out).
    pub urls: Vec<String>,
}

/// Pull request `number` of the repository at `repository`, at commit `head`, as a preview
/// of `state`: every project renamed, nothing protected (a preview is destroyed whole), each
/// route's host rewritten, each service built from `repository` pinned to `head`, so the
/// preview runs the pull request's code, and only the secrets `settings.secrets` names kept.
/// Refused when a renamed project or a rewritten host is not valid, two routes would serve
/// the same host and path, or a preview-only group is not declared.
pub fn rewrite(
    state: &DesiredState,
    settings: &Settings,
    number: u64,
    repository: &str,
    head: &str,
) -> Result<Preview, String> {
    let mut preview = Preview {
        state: DesiredState::default(),
        copies: Copies::new(),
        urls: Vec::new(),
    };
    let mut served: BTreeMap<(String, String), String> = BTreeMap::new();
    for (address, resource) in &state.resources {
        let renamed = project(&address.project, number);
        schema::rules::project_name(&renamed).map_err(|problem| {
            format!(
                "project `{}` cannot have a preview: {}",
                address.project, problem.message
            )
        })?;
        preview
            .copies
            .insert(renamed.clone(), address.project.clone());
        let name = if address.kind == Kind::Project {
            renamed.clone()
        } else {
            address.name.clone()
        };
        let mut spec = resource.spec.clone();
        match &mut spec {
            Spec::Route(route) => {
                let host = settings.host.host(number, &route.host);
                route.host = schema::rules::host(&host).map_err(|problem| {
                    format!(
                        "route `{}/{}` cannot have a preview: {}",
                        address.project, address.name, problem.message
                    )
                })?;
                let key = (route.host.clone(), route.path.clone());
                if let Some(other) = served.insert(key, address.to_string()) {
                    return Err(format!(
                        "{other} and {address} would both serve `{}{}` in the preview; put `{{host}}` in previews.host",
                        route.host, route.path
                    ));
                }
                if !route.host.starts_with("*.") {
                    preview.urls.push(format!(
                        "{}://{}{}",
                        settings.scheme, route.host, route.path
                    ));
                }
            }
            Spec::Service(service) => {
                // Spelt as the source spells it, the checkout shares the cache that the
                // review fetched the head into.
                if let Workload::Source { source, .. } = &mut service.workload
                    && same_repository(&source.git, repository)
                {
                    repository.clone_into(&mut source.git);
                    head.clone_into(&mut source.git_ref);
                }
                service.variable_groups = with_preview_groups(
                    &service.variable_groups,
                    &settings.secrets,
                    |group| {
                        let declared = Address::new(Kind::VariableGroup, &address.project, group);
                        state.resources.contains_key(&declared).then_some(()).ok_or_else(|| {
                            format!(
                                "previews.secrets: service `{}/{}` uses group `{group}` in a preview, which project `{}` does not declare",
                                address.project, address.name, address.project
                            )
                        })
                    },
                )?;
            }
            Spec::VariableGroup(group) => {
                let kept = match settings.secrets.get(&address.name) {
                    Some(Secrets::Inherit) => true,
                    _ => settings
                        .secrets
                        .values()
                        .any(|s| *s == Secrets::From(address.name.clone())),
                };
                if !kept {
                    group.secrets.clear();
                }
            }
            Spec::Project(_) => {}
        }
        let address = Address::new(address.kind, &renamed, &name);
        preview.state.resources.insert(
            address.clone(),
            Resource {
                address,
                origin: resource.origin.clone(),
                protect: false,
                spec,
            },
        );
    }
    preview.urls.sort();
    Ok(preview)
}

/// A service's groups in a preview: after each group that takes its secrets from a
/// preview-only group, that group (once), which `declared` checks exists.
fn with_preview_groups(
    groups: &[String],
    secrets: &BTreeMap<String, Secrets>,
    declared: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for group in groups {
        if !out.contains(group) {
            out.push(group.clone());
        }
        if let Some(Secrets::From(preview)) = secrets.get(group) {
            declared(preview)?;
            out.retain(|g| g != preview);
            out.push(preview.clone());
        }
    }
    Ok(out)
}

/// Whether two spellings of a repository's URL name the same repository (`file://`, a
/// trailing `/` or `.git` aside).
fn same_repository(a: &str, b: &str) -> bool {
    let plain = |url: &str| -> String {
        let url = url.strip_prefix("file://").unwrap_or(url);
        url.trim_end_matches('/')
            .trim_end_matches(".git")
            .to_owned()
    };
    plain(a) == plain(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(template: &str) -> Settings {
        Settings {
            host: Template::parse(template).expect("a template"),
            ttl: Duration::from_secs(3600),
            max_active: 5,
            allow_forks: false,
            scheme: "https".into(),
            secrets: BTreeMap::new(),
            trust: Trust::default(),
        }
    }

    fn load(yaml: &str) -> DesiredState {
        let files = vec![schema::ManifestFile::new(
            "shop.yaml",
            yaml.as_bytes().to_vec(),
        )];
        schema::load(&files, &schema::Limits::default()).expect("valid manifests")
    }

    const SHOP: &str = "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: shop\n  protect: true\n---\n\
        apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: web\n  project: shop\nspec:\n  source:\n    git: https://git.example.com/acme/shop.git\n    ref: main\n  build:\n    strategy: none\n  command: ./run\n---\n\
        apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: api\n  project: shop\nspec:\n  source:\n    git: https://git.example.com/acme/api\n    ref: v2\n  build:\n    strategy: none\n  command: ./run\n---\n\
        apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: web\n  project: shop\nspec:\n  host: shop.example.com\n  service: web\n---\n\
        apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: all\n  project: shop\nspec:\n  host: '*.shop.example.com'\n  path: /api\n  service: api\n";

    #[test]
    fn projects_are_renamed_hosts_rewritten_and_this_repository_pinned_to_the_head() {
        let preview = rewrite(
            &load(SHOP),
            &settings("pr-{number}.{host}"),
            7,
            "https://git.example.com/acme/shop",
            "abc123",
        )
        .expect("a preview");
        let addresses: Vec<String> = preview
            .state
            .resources
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            addresses,
            [
                "project/shop-pr-7",
                "service/shop-pr-7/api",
                "service/shop-pr-7/web",
                "route/shop-pr-7/all",
                "route/shop-pr-7/web"
            ]
        );
        assert!(preview.state.resources.values().all(|r| !r.protect));
        let spec =
            |kind, name| &preview.state.resources[&Address::new(kind, "shop-pr-7", name)].spec;
        let Spec::Route(web) = spec(Kind::Route, "web") else {
            panic!("a route")
        };
        assert_eq!(web.host, "pr-7.shop.example.com");
        let Spec::Route(all) = spec(Kind::Route, "all") else {
            panic!("a route")
        };
        assert_eq!(all.host, "*.pr-7.shop.example.com");
        let checkout = |name| match spec(Kind::Service, name) {
            Spec::Service(s) => match &s.workload {
                Workload::Source { source, .. } => (source.git.clone(), source.git_ref.clone()),
                Workload::Image(_) => panic!("a source"),
            },
            _ => panic!("a service"),
        };
        assert_eq!(
            checkout("web"),
            ("https://git.example.com/acme/shop".into(), "abc123".into()),
            "this repository runs the head, fetched where the review fetched it"
        );
        assert_eq!(
            checkout("api"),
            ("https://git.example.com/acme/api".into(), "v2".into()),
            "another repository is left alone"
        );
        assert_eq!(preview.urls, ["https://pr-7.shop.example.com/"]);
        assert_eq!(preview.copies["shop-pr-7"], "shop");
    }

    const GROUPS: &str = "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: shop\n---\n\
        apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: creds\n  project: shop\nspec:\n  variables:\n    DB_HOST: db.internal\n  secrets:\n    TOKEN: meshploy:v1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n---\n\
        apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: creds-preview\n  project: shop\nspec:\n  secrets:\n    TOKEN: meshploy:v1:k1:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB\n---\n\
        apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: metrics\n  project: shop\nspec:\n  secrets:\n    KEY: meshploy:v1:k1:CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC\n---\n\
        apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: web\n  project: shop\nspec:\n  image: web:1\n  variableGroups: [creds, metrics]\n";

    /// Each group of the preview of [`GROUPS`] under `secrets`, with its secrets' names;
    /// and the groups of its service.
    fn groups(secrets: &[(&str, Secrets)]) -> (Vec<(String, Vec<String>)>, Vec<String>) {
        let mut settings = settings("pr-{number}.{host}");
        settings.secrets = secrets
            .iter()
            .map(|(name, s)| ((*name).to_owned(), s.clone()))
            .collect();
        let preview = rewrite(&load(GROUPS), &settings, 7, "x", "abc").expect("a preview");
        let mut groups = Vec::new();
        let mut used = Vec::new();
        for (address, resource) in &preview.state.resources {
            match &resource.spec {
                Spec::VariableGroup(g) => {
                    groups.push((address.name.clone(), g.secrets.keys().cloned().collect()))
                }
                Spec::Service(s) => used.clone_from(&s.variable_groups),
                _ => {}
            }
        }
        (groups, used)
    }

    #[test]
    fn a_preview_keeps_only_the_secrets_named_for_previews() {
        let none = |name: &str| (name.to_owned(), Vec::<String>::new());
        let token = |name: &str, key: &str| (name.to_owned(), vec![key.to_owned()]);
        // By default no group keeps a secret; variables stay.
        let (kept, used) = groups(&[]);
        assert_eq!(
            kept,
            [none("creds"), none("creds-preview"), none("metrics")]
        );
        assert_eq!(used, ["creds", "metrics"]);
        // A preview-only group stands in for `creds`; `metrics` is inherited by choice.
        let (kept, used) = groups(&[
            ("creds", Secrets::From("creds-preview".into())),
            ("metrics", Secrets::Inherit),
        ]);
        assert_eq!(
            kept,
            [
                none("creds"),
                token("creds-preview", "TOKEN"),
                token("metrics", "KEY")
            ]
        );
        assert_eq!(used, ["creds", "creds-preview", "metrics"]);
        let preview = rewrite(
            &load(GROUPS),
            &settings("pr-{number}.{host}"),
            7,
            "x",
            "abc",
        )
        .expect("a preview");
        let creds =
            &preview.state.resources[&Address::new(Kind::VariableGroup, "shop-pr-7", "creds")];
        let Spec::VariableGroup(creds) = &creds.spec else {
            panic!("a group")
        };
        assert_eq!(creds.variables["DB_HOST"], "db.internal");
        // A preview-only group the manifests do not declare is refused by name.
        let mut wrong = settings("pr-{number}.{host}");
        wrong
            .secrets
            .insert("creds".into(), Secrets::From("missing".into()));
        let error = rewrite(&load(GROUPS), &wrong, 7, "x", "abc").expect_err("undeclared");
        assert!(
            error.contains("service `shop/web` uses group `missing` in a preview, which project `shop` does not declare"),
            "{error}"
        );
    }

    #[test]
    fn trusted_authors_or_a_maintainers_label_approve_a_pull_request() {
        let pull = |association: &str, labels: &[&str]| PullRequest {
            head: "abc".into(),
            open: true,
            fork: false,
            author: "mallory".into(),
            association: association.into(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        };
        let trust = Trust::default();
        for association in ["OWNER", "MEMBER", "COLLABORATOR"] {
            assert!(trust.trusts(&pull(association, &[])), "{association}");
        }
        for association in ["CONTRIBUTOR", "FIRST_TIME_CONTRIBUTOR", "NONE", ""] {
            assert!(!trust.trusts(&pull(association, &["bug"])), "{association}");
        }
        assert!(trust.trusts(&pull("NONE", &["bug", "preview-approved"])));
        let why = trust.untrusted(&pull("CONTRIBUTOR", &[]));
        assert!(why.contains("`mallory` (CONTRIBUTOR)"), "{why}");
        assert!(why.contains("adding the label `preview-approved`"), "{why}");
    }

    #[test]
    fn a_template_without_the_number_or_with_an_unknown_placeholder_is_refused() {
        let error = Template::parse("preview.{host}").expect_err("no number");
        assert!(error.contains("no `{number}`"), "{error}");
        let error = Template::parse("pr-{number}.{branch}.example.com").expect_err("unknown");
        assert!(
            error.contains("other than `{number}` and `{host}`"),
            "{error}"
        );
    }

    #[test]
    fn colliding_hosts_and_names_too_long_for_a_preview_are_refused_by_name() {
        let two = SHOP.replace("'*.shop.example.com'\n  path: /api", "www.example.com");
        let error = rewrite(
            &load(&two),
            &settings("pr-{number}.preview.example.com"),
            7,
            "x",
            "abc",
        )
        .expect_err("two routes on one host and path");
        assert!(
            error.contains(
                "route/shop/all and route/shop/web would both serve `pr-7.preview.example.com/`"
            ),
            "{error}"
        );
        let long = "a".repeat(60);
        let error = rewrite(
            &load(&SHOP.replace("shop", &long)),
            &settings("pr-{number}.{host}"),
            1234,
            "x",
            "abc",
        )
        .expect_err("a name over 63 characters");
        assert!(
            error.contains(&format!("project `{long}` cannot have a preview")),
            "{error}"
        );
        let error = rewrite(&load(SHOP), &settings("pr_{number}.{host}"), 7, "x", "abc")
            .expect_err("an underscore in a host");
        assert!(
            error.contains("route `shop/all` cannot have a preview: label `pr_7`"),
            "{error}"
        );
    }
}
