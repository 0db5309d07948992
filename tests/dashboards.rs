//! The shipped observability files, checked without a run: promtool accepts
//! the Prometheus configuration and rules, the compose file mounts exactly
//! the shipped files where the configuration expects them, and every
//! dashboard selects the run and reads the provisioned data source.

mod dashboards_support;

use dashboards_support::{
    assert_success, dashboards, dashboards_dir, panel_queries, panels, parse, read_yaml, tool,
};
use serde_json::Value;

fn path_arg(relative: &str) -> String {
    dashboards_dir()
        .join(relative)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn promtool_accepts_the_shipped_prometheus_config_and_rules() {
    let config = path_arg("prometheus/prometheus.yml");
    let rules = path_arg("prometheus/fleetsim.rules.yml");

    assert_success(
        &tool("promtool", &["check", "config", &config], None),
        "promtool check config",
    );
    assert_success(
        &tool("promtool", &["check", "rules", &rules], None),
        "promtool check rules",
    );
}

/// `./host:container[:ro]` volumes of one compose service, as pairs.
fn mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| {
            let mut parts = v.as_str().unwrap().split(':');
            let host = parts.next().unwrap();
            host.starts_with("./")
                .then(|| (host.to_owned(), parts.next().unwrap().to_owned()))
        })
        .collect()
}

fn mounted_at<'a>(mounts: &'a [(String, String)], host: &str) -> &'a str {
    let found = mounts.iter().find(|(h, _)| h == host);
    &found
        .unwrap_or_else(|| panic!("{host} is not mounted: {mounts:?}"))
        .1
}

#[test]
fn compose_file_mounts_the_shipped_config_rules_datasource_and_dashboards() {
    let compose = read_yaml(&dashboards_dir().join("compose.yaml"));
    let prometheus = &compose["services"]["prometheus"];
    let grafana = &compose["services"]["grafana"];
    for (_, service) in compose["services"].as_object().unwrap() {
        for (host, _) in mounts(service) {
            assert!(dashboards_dir().join(&host).exists(), "{host} is shipped");
        }
    }

    let prom_mounts = mounts(prometheus);
    let config_at = mounted_at(&prom_mounts, "./prometheus/prometheus.yml");
    let command: Vec<&str> = prometheus["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        command.contains(&format!("--config.file={config_at}").as_str()),
        "{command:?}"
    );
    let config = read_yaml(&dashboards_dir().join("prometheus/prometheus.yml"));
    let rules = config["rule_files"][0].as_str().unwrap();
    let rules_at = mounted_at(&prom_mounts, &format!("./prometheus/{rules}"));
    assert_eq!(
        rules_at,
        format!("/etc/prometheus/{rules}"),
        "rules sit beside the config"
    );
    let target = config["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str();
    assert_eq!(
        target,
        Some("127.0.0.1:9464"),
        "scrapes fleetsim's default address"
    );
    assert_eq!(
        prometheus["network_mode"], "host",
        "reaches the host's loopback"
    );

    let graf_mounts = mounts(grafana);
    let datasources = mounted_at(&graf_mounts, "./grafana/provisioning/datasources");
    assert_eq!(datasources, "/etc/grafana/provisioning/datasources");
    let providers = mounted_at(&graf_mounts, "./grafana/provisioning/dashboards");
    assert_eq!(providers, "/etc/grafana/provisioning/dashboards");
    let provider =
        read_yaml(&dashboards_dir().join("grafana/provisioning/dashboards/fleetsim.yml"));
    let dashboards_at = mounted_at(&graf_mounts, "./grafana/dashboards");
    assert_eq!(provider["providers"][0]["options"]["path"], dashboards_at);
    assert_eq!(
        grafana["network_mode"], "host",
        "reaches Prometheus on the host's loopback"
    );
}

#[test]
fn provisioned_datasource_is_the_prometheus_of_the_compose_file() {
    let datasource =
        read_yaml(&dashboards_dir().join("grafana/provisioning/datasources/prometheus.yml"));
    let source = &datasource["datasources"][0];
    let compose = read_yaml(&dashboards_dir().join("compose.yaml"));
    let command = compose["services"]["prometheus"]["command"].to_string();

    assert_eq!(source["type"], "prometheus");
    assert_eq!(source["url"], "http://127.0.0.1:9090");
    assert!(
        command.contains("--web.listen-address=127.0.0.1:9090"),
        "{command}"
    );
    for (file, dashboard) in dashboards() {
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        let picker = variables
            .iter()
            .find(|v| v["name"] == "datasource")
            .unwrap();
        assert_eq!(
            picker["current"]["value"], source["uid"],
            "{file} defaults to it"
        );
    }
}

#[test]
fn every_dashboard_selects_runs_with_a_bounded_run_variable() {
    for (file, dashboard) in dashboards() {
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        let run = variables
            .iter()
            .find(|v| v["name"] == "run")
            .expect("a run variable");
        assert_eq!(
            run["query"]["query"], "label_values(fleetsim_run_info, run)",
            "{file}"
        );
        assert_eq!(run["multi"], true, "{file}: several runs can be compared");
    }
}

#[test]
fn every_panel_query_filters_by_run_and_reads_the_chosen_datasource() {
    let queries = panel_queries();
    assert!(queries.len() > 20, "both dashboards have their panels");
    for query in &queries {
        assert!(
            query.expr.contains(r#"run=~"$run""#),
            "{query:?} filters by run"
        );
        assert!(
            !parse(&query.expr).selectors.is_empty(),
            "{query:?} names a metric"
        );
    }
    for (file, dashboard) in dashboards() {
        for panel in panels(&dashboard)
            .into_iter()
            .filter(|p| p["type"] != "row")
        {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{file}: {}",
                panel["title"]
            );
            assert!(panel["description"].as_str().is_some_and(|d| !d.is_empty()));
        }
    }
}

#[test]
fn panels_have_unique_ids_and_fit_the_grid() {
    for (file, dashboard) in dashboards() {
        let mut ids = std::collections::BTreeSet::new();
        for panel in panels(&dashboard) {
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{file}: duplicate id"
            );
            let grid = &panel["gridPos"];
            let right = grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap();
            assert!(right <= 24, "{file}: {} overflows the grid", panel["title"]);
        }
    }
}

#[test]
fn the_selector_reader_finds_names_matchers_and_grouping() {
    let parsed = parse(
        r#"sum by (run, le) (rate(a_bucket{run=~"x", op="connect"}[1m])) and on (instance) b"#,
    );
    let names: Vec<_> = parsed.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["a_bucket", "b"]);
    assert_eq!(
        parsed.selectors[0].matchers[1],
        ("op".into(), "=".into(), "connect".into())
    );
    assert_eq!(
        parsed.grouping.into_iter().collect::<Vec<_>>(),
        ["instance", "le", "run"]
    );
}
