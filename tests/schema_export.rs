//! `meshploy schema`: the exported JSON Schema agrees with the loader, checked by an
//! independent validator.

use crate::util::{Dir, Run, meshploy, repo_root};

fn exported_schema() -> jsonschema::Validator {
    let run = Run::new(meshploy().arg("schema").output());
    assert_eq!(run.code, 0, "{}", run.stderr);
    jsonschema::validator_for(&run.json()).expect("the exported schema is a valid JSON Schema")
}

/// Every document of a YAML file, as JSON values.
fn documents(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .expect("parse manifest")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn yaml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read examples") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_document_satisfies_the_schema() {
    let validator = exported_schema();
    let mut files = Vec::new();
    yaml_files(&repo_root().join("examples"), &mut files);
    let mut checked = 0;
    // `examples/broken` shows how problems are reported: the schema refuses it too.
    let (broken, files): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|f| f.starts_with(repo_root().join("examples/broken")));
    let refused = broken
        .iter()
        .flat_map(|f| documents(f))
        .filter(|d| validator.iter_errors(d).next().is_some())
        .count();
    assert_eq!(
        refused, 1,
        "examples/broken/web.yaml is refused by the schema"
    );
    for file in files {
        for document in documents(&file) {
            let errors: Vec<String> = validator
                .iter_errors(&document)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} documents checked");
}

#[test]
fn the_schema_rejects_unknown_fields_and_missing_requirements() {
    let validator = exported_schema();
    let dir = Dir::new();
    let bad = [
        // An unknown field in a spec.
        "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata: {name: web, project: shop}\nspec: {image: nginx, replica: 3}\n",
        // An unknown top-level field.
        "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata: {name: shop}\nstatus: {}\n",
        // A project inside a project.
        "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata: {name: shop, project: other}\n",
        // A service without its project.
        "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata: {name: web}\nspec: {image: nginx}\n",
        // An unknown kind.
        "apiVersion: meshploy.dev/v1\nkind: Servce\nmetadata: {name: web, project: shop}\n",
        // A wrong type.
        "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata: {name: web, project: shop}\nspec: {image: nginx, port: eighty}\n",
    ];
    for (i, text) in bad.iter().enumerate() {
        let path = dir.write(&format!("bad{i}.yaml"), text);
        let document = &documents(&path)[0];
        assert!(!validator.is_valid(document), "schema accepted:\n{text}");
        // The loader agrees with the schema.
        let run = dir.meshploy(&["validate", "--format", "json"]);
        assert_eq!(run.code, 1);
        std::fs::remove_file(path).expect("remove");
    }
}

#[test]
fn the_committed_schema_file_matches_the_binary() {
    let run = Run::new(meshploy().arg("schema").output());
    let committed = std::fs::read_to_string(repo_root().join("schema/manifest.schema.json"))
        .expect("schema/manifest.schema.json");
    assert!(
        committed == run.stdout,
        "schema/manifest.schema.json is stale: run `cargo run -- schema > schema/manifest.schema.json`"
    );
}
