//! The dashboard at `/` on the hub's admin port, in a real headless
//! Chromium: it lists the agents, follows them live (an agent that
//! connects appears, one killed shows among the disconnects), shows the
//! calls per key and method, filters by search, fits a phone's width; a
//! screenshot goes to `target/dashboard.png` for people to look at.

mod common;

use common::{browser::Browser, *};

/// The rows of one table's class in the page.
const AGENT_ROWS: &str = "document.querySelectorAll('tr.agent').length";

#[cfg_attr(
    missing_chromium,
    ignore = "needs `chromium` on PATH (apt-get install chromium)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_agents_live_in_a_real_browser() {
    bounded(async {
        let dir = temp_dir();
        let up = upstream().await;
        let (hub, addr) = hub_with(
            &dir,
            AGENT_TOKEN,
            &["plant-1", "plant-2", "plant-3"],
            &["--admin", "127.0.0.1:0"],
        )
        .await;
        let admin = hub.admin.expect("ADMIN line");
        let mut one = agent(&dir, addr, "plant-1", AGENT_TOKEN, up);
        let mut two = agent(&dir, addr, "plant-2", AGENT_TOKEN, up);
        one.log_line("tunnel open").await;
        two.log_line("tunnel open").await;
        let mut c = caller(addr, "plant-1", false).await;
        for _ in 0..30 {
            c.unary(hello("charted")).await.expect("call");
        }

        let mut page = Browser::open(&format!("http://{admin}/"), 1280, 860).await;
        page.wait_for(
            "two agent rows, from the live stream",
            &format!("{AGENT_ROWS} === 2 && Number(document.body.dataset.updates) >= 1"),
        )
        .await;
        assert_eq!(page.eval("document.getElementById('hub').textContent").await, addr.to_string());
        assert_eq!(page.eval("document.getElementById('n-agents').textContent").await, "2");
        assert_eq!(page.eval("document.getElementById('live').textContent").await, "live");
        // The calls of plant-1, per method.
        let method = page
            .eval("[...document.querySelectorAll('tr.method[data-key=\"plant-1\"] td')].map(td => td.textContent)")
            .await;
        assert_eq!(method[1], "/grpctunnel.testing.v1.EchoService/Unary", "{method}");
        assert_eq!(method[2], "0.50", "30 calls in the minute: {method}");
        assert_eq!(method[3], "0.0%", "{method}");

        // Live: an agent connects, another is killed.
        let mut three = agent(&dir, addr, "plant-3", AGENT_TOKEN, up);
        three.log_line("tunnel open").await;
        page.wait_for(
            "the new agent's row",
            "document.querySelector('tr.agent[data-key=\"plant-3\"]') !== null",
        )
        .await;
        two.child.start_kill().expect("kill -9");
        page.wait_for(
            "the killed agent among the disconnects, not the agents",
            "document.querySelector('tr.disconnect[data-key=\"plant-2\"]') !== null \
             && document.querySelector('tr.agent[data-key=\"plant-2\"]') === null",
        )
        .await;

        // Search.
        page.eval(
            "(() => { const s = document.getElementById('search'); s.value = 'plant-3'; \
             s.dispatchEvent(new Event('input')); })()",
        )
        .await;
        assert_eq!(page.eval(AGENT_ROWS).await, 1);
        page.eval(
            "(() => { const s = document.getElementById('search'); s.value = ''; \
             s.dispatchEvent(new Event('input')); })()",
        )
        .await;
        assert_eq!(page.eval(AGENT_ROWS).await, 2);

        let shot = page.screenshot().await;
        assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("..");
        std::fs::write(target.join("dashboard.png"), &shot).expect("write the screenshot");

        // A phone: nothing wider than the screen (tables scroll inside
        // their own boxes).
        page.resize(390, 844).await;
        assert_eq!(
            page.eval("document.documentElement.scrollWidth <= window.innerWidth").await,
            true
        );
        std::fs::write(target.join("dashboard-phone.png"), page.screenshot().await)
            .expect("write the screenshot");
        drop(page);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}
