// Drives Debian's chromium (headless) through buildbay's pages, one phase per run:
//   node pages.mjs <phase>
// with BB_URL, BB_USER, BB_PASSWORD, BB_SHOTS (screenshot directory) and, for the phases that
// need them, BB_SOURCE (a package in the archive) and BB_UPLOAD (a JSON argv that uploads a
// hostile package). tests/browser.rs runs the phases in order; any failed check exits non-zero.
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";

const base = process.env.BB_URL;
const shots = process.env.BB_SHOTS;
const phase = process.argv[2];

function check(cond, msg) {
  if (!cond) throw new Error("check failed: " + msg);
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
// Any alert, confirm or prompt would be injected script: the pages open none.
page.on("dialog", async (d) => {
  console.error("a dialog opened: " + d.message());
  process.exitCode = 3;
  await d.dismiss();
});
page.on("pageerror", (e) => {
  console.error("page script error: " + e.message);
  process.exitCode = 4;
});

async function shot(name) {
  if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

async function login() {
  await page.goto(base + "/accounts/login/?next=/mini_buildd/");
  await page.fill("#id_username", process.env.BB_USER);
  await page.fill("#id_password", process.env.BB_PASSWORD);
  await Promise.all([page.waitForURL(base + "/mini_buildd/"), page.click("form.login button[type=submit]")]);
  check((await page.textContent("header .account")).includes(process.env.BB_USER), "logged in as the user");
}

async function loginPageIsInTheLayout() {
  await page.goto(base + "/accounts/login/?next=/mini_buildd/");
  check(await page.isVisible("header nav"), "the login page has the site's navigation");
  await page.fill("#id_username", process.env.BB_USER);
  await page.fill("#id_password", "wrong password");
  await page.click("form.login button[type=submit]");
  check((await page.textContent("main [role=alert]")).includes("Wrong user name or password"), "a wrong password is said plainly");
}

async function createSourceFromFields() {
  await page.goto(base + "/mini_buildd/config/");
  await page.click("text=New source");
  // The form starts from an example; bad JSON is refused with what is wrong, and nothing is saved.
  await page.fill("#o-fields", "{\"origin\": \"Debian\", ");
  await page.check("input[name=confirm]");
  const bad = await Promise.all([page.waitForEvent("response", (r) => r.url().includes("/api/config_set/")), page.click("form.edit button[type=submit]")]);
  check(bad[0].status() === 400, `bad JSON is a 400 (got ${bad[0].status()})`);
  check((await page.textContent("main")).includes("not JSON"), "the error says the fields are not JSON");
  await page.goto(base + "/mini_buildd/config/source/new/");
  await page.check("input[name=confirm]");
  await Promise.all([page.waitForURL(/\/mini_buildd\/config\//), page.click("form.edit button[type=submit]")]);
  check((await row("source", "Debian:trixie").locator(".badge").textContent()) === "REMOVED", "the new source is listed, not prepared yet");
  // An active object's form says what saving does before it does it.
  await row("distribution", "bookworm").locator("th a").click();
  check((await page.textContent("main .warn")).includes("Saving a change deactivates it"), "an active object's form warns");
  check((await page.inputValue("#o-fields")).includes("\"base_source\""), "the form shows the distribution's fields");
  await shot("config-object");
}

/// The one row of the configuration table for an object.
const row = (kind, id) => page.locator(`tr[id="${kind}-${id}"]`);

async function createRepositoryAndPca() {
  await page.click("text=Configuration");
  await page.click("text=New repository");
  await page.fill("#r-identity", "web");
  await page.check("input[name=distributions][value=bookworm]");
  await page.check("input[name=allow_unauthenticated_uploads]");
  await page.check("input[name=confirm]");
  await Promise.all([page.waitForURL(/\/mini_buildd\/config\//), page.click("form.edit button[type=submit]")]);
  check((await row("repository", "web").locator(".badge").textContent()) === "REMOVED", "a new repository is not prepared yet");
  const r = row("repository", "web");
  await r.locator("select[name=action]").selectOption("pca");
  await r.locator("input[name=confirm]").check();
  await Promise.all([page.waitForURL(/\/mini_buildd\/config\//), r.locator("button[type=submit]").click()]);
  check((await row("repository", "web").locator(".badge").textContent()) === "ACTIVE", "PCA made the repository active");
  await shot("config");
  // The repositories page now lists it with its apt lines.
  await page.click("header >> text=Repositories");
  check(await page.isVisible("#repo-web"), "the repositories page lists web");
  check((await page.textContent("#repo-web ~ pre.copy")).includes("/repositories/web bookworm-web-unstable"), "apt line for web");
}

async function trackerMigrateAndLiveEvent() {
  const source = process.env.BB_SOURCE;
  // A second tab keeps the events page open; the MIGRATED event must arrive there live.
  const events = await context.newPage();
  await events.goto(base + "/mini_buildd/events/?type=MIGRATED");
  await events.waitForSelector("[data-live-status][data-connected=yes]");
  await events.evaluate(() => { window.__notReloaded = true; });

  await page.fill("#find-source", source);
  await Promise.all([page.waitForURL(new RegExp(`/mini_buildd/sources/${source}/`)), page.press("#find-source", "Enter")]);
  const unstable = page.locator("tr", { has: page.locator("th", { hasText: "bookworm-web-unstable" }) });
  check((await unstable.locator("strong").textContent()) === process.env.BB_VERSION, "the tracker shows the version in unstable");
  await shot("tracker");
  const migrate = unstable.locator("form", { has: page.locator("button", { hasText: "Migrate" }) });
  // Without the confirmation the browser refuses to submit.
  await migrate.locator("button").click();
  check(page.url().includes(`/mini_buildd/sources/${source}/`), "still on the tracker page without confirming");
  await migrate.locator("input[name=confirm]").check();
  await Promise.all([page.waitForURL(new RegExp(`/mini_buildd/sources/${source}/`)), migrate.locator("button").click()]);
  const testing = page.locator("tr", { has: page.locator("th", { hasText: "bookworm-web-testing" }) });
  check((await testing.locator("strong").textContent()) === process.env.BB_VERSION, "the version is in testing after the migration");

  // The debdiff to the version before, in the rollback.
  await Promise.all([page.waitForURL(/\/api\/debdiff\//), page.click(`text=debdiff ${process.env.BB_OLD} → ${process.env.BB_VERSION}`)]);
  const diff = await page.textContent("main pre");
  check(diff.includes(`webpkg (${process.env.BB_VERSION})`), "the debdiff shows the new changelog entry");
  await shot("debdiff");
  await page.click("main >> text=Back");
  check(page.url().includes(`/mini_buildd/sources/${source}/`), "Back returns to the tracker");

  // Port (a rebuild in place) from the tracker: the target chosen, confirmed; the answer
  // names the new version, which goes through incoming as an upload.
  const unstableAgain = page.locator("tr", { has: page.locator("th", { hasText: "bookworm-web-unstable" }) });
  const port = unstableAgain.locator("form", { has: page.locator("button", { hasText: "Port" }) });
  await port.locator("select[name=to_distributions]").selectOption("bookworm-web-unstable");
  await port.locator("input[name=confirm]").check();
  await Promise.all([page.waitForURL(/\/api\/port\//), port.locator("button").click()]);
  const answer = await page.textContent("main pre");
  check(answer.includes(`"version": "${process.env.BB_VERSION}+rebuilt`), `the port answers with the rebuilt version: ${answer}`);
  await shot("port");
  await page.click("main >> text=Back");
  check(page.url().includes(`/mini_buildd/sources/${source}/`), "Back returns to the tracker after the port");

  // The repository page: the keyring package's state, and the admin's actions behind a
  // confirmation.
  await page.goto(base + "/mini_buildd/repositories/");
  const keyring = await page.locator("ul.keyring li", { hasText: "bookworm-web-unstable" }).textContent();
  check(keyring.includes("bookworm-web-unstable: not built"), `the keyring package is not built yet: ${keyring}`);
  check((await page.locator("form", { has: page.locator("button", { hasText: "Build keyring packages" }) }).count()) === 1, "the admin can build the keyring packages");
  check((await page.locator("form", { has: page.locator("button", { hasText: "Upload test packages" }) }).count()) === 1, "the admin can upload the test packages");

  const live = events.locator(`tbody tr[data-type=MIGRATED][data-source="${source}"]`);
  await live.first().waitFor({ timeout: 15000 });
  check(await events.evaluate(() => window.__notReloaded === true), "the events page was not reloaded");
  await events.screenshot({ path: `${shots}/events.png`, fullPage: true });
}

async function crontabRunNow() {
  // The crontab page from the admin's menu; a job run now with the confirmation shows its result.
  await page.goto(base + "/mini_buildd/");
  await Promise.all([page.waitForURL(/\/mini_buildd\/crontab\//), page.click("nav >> text=Crontab")]);
  const row = page.locator("tr[data-job='cronjob_setup_inspect (WEEKLY)']");
  check((await row.locator("td").first().textContent()).trim() === "—", "the inspection has not run yet");
  await row.locator("input[name=confirm]").check();
  await Promise.all([page.waitForURL(/\/mini_buildd\/crontab\//), row.locator("button", { hasText: "Run now" }).click()]);
  const after = page.locator("tr[data-job='cronjob_setup_inspect (WEEKLY)']");
  check((await after.locator(".badge").textContent()) === "ok", "the job ran and succeeded");
  check((await after.textContent()).includes("objects"), "its result is shown");
  check((await after.locator("time").count()) === 2, "its last and next runs are shown");
  await shot("crontab");
}

async function screenshots() {
  for (const [name, path] of [["home", "/mini_buildd/"], ["repositories", "/mini_buildd/repositories/"], ["builds", "/mini_buildd/builds/"],
    ["setup", "/mini_buildd/setup/?distributions=bookworm:amd64&repositories=web:Default:bookworm"], ["api", "/mini_buildd/api/"], ["account", "/accounts/profile/"]]) {
    await page.goto(base + path);
    if (name === "setup") {
      // mini-buildd's bootstrap presets, each a confirmed form posting setup's own arguments.
      check((await page.locator("form.preset").count()) === 2, "the Debian and Ubuntu bootstrap presets are offered");
      check((await page.locator("form.preset input[name='from_origins'][value='Ubuntu']").count()) === 1, "the Ubuntu preset names its origin");
      check((await page.locator("form.preset input[name='chroots_from_sources'][value='true']").count()) === 2, "the presets make the chroots");
      check((await page.locator("form.preset input[name='confirm'][required]").count()) === 2, "each needs its confirmation");
    }
    await shot(name);
  }
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(base + "/mini_buildd/");
  await shot("home-phone");
}

async function anonymousIsRefused() {
  for (const path of ["/mini_buildd/config/", "/mini_buildd/setup/", "/mini_buildd/config/repository/new/", "/mini_buildd/config/repository/web/",
    "/mini_buildd/config/distribution/bookworm/", "/mini_buildd/config/source/new/", "/accounts/profile/"]) {
    const r = await page.goto(base + path);
    check(r.status() === 401, `${path} refuses an anonymous visitor (got ${r.status()})`);
    check((await page.locator("main form").count()) === 0, `${path} shows no form to an anonymous visitor`);
  }
  const source = process.env.BB_SOURCE;
  await page.goto(base + `/mini_buildd/sources/${source}/`);
  check((await page.locator("button", { hasText: /Migrate|Remove|Restore|Port/ }).count()) === 0, "no actions on the tracker for anonymous");
  await page.goto(base + "/mini_buildd/repositories/");
  check((await page.locator("button", { hasText: /keyring|test packages/ }).count()) === 0, "no keyring or test package actions for anonymous");
  for (const [call, form] of [
    ["config_action", { kind: "repository", id: "web", action: "remove", confirm: "config_action" }],
    ["repository_set", { identity: "evil", distributions: "bookworm", confirm: "repository_set" }],
    ["config_set", { kind: "source", object: "{\"origin\": \"Evil\", \"codename\": \"evil\", \"codeversion\": \"1\", \"components\": [], \"architectures\": []}", confirm: "config_set" }],
    ["migrate", { source, distribution: "bookworm-web-testing", confirm: "migrate" }],
    ["port", { source, from_distribution: "bookworm-web-unstable", to_distributions: "bookworm-web-unstable", confirm: "port" }],
    ["keyring_packages", { confirm: "keyring_packages" }],
    ["test_packages", { confirm: "test_packages" }],
    ["cronjob", { id: "cronjob_expire_events (WEEKLY)", confirm: "cronjob" }],
    ["remove", { source, distribution: "bookworm-web-unstable", confirm: "remove" }],
    ["setup", { update: "all", repositories: "evil:Default:bookworm", confirm: "setup" }],
  ]) {
    const r = await page.request.post(base + `/mini_buildd/api/${call}/`, { form: { ...form, output: "html" }, maxRedirects: 0 });
    check(r.status() === 401, `anonymous ${call} is refused (got ${r.status()})`);
  }
}

async function hostileInputIsEscaped() {
  await page.goto(base + "/mini_buildd/events/");
  await page.waitForSelector("[data-live-status][data-connected=yes]");
  execFileSync(JSON.parse(process.env.BB_UPLOAD)[0], JSON.parse(process.env.BB_UPLOAD).slice(1), { stdio: "inherit" });
  // The upload's events arrive live, carrying the hostile Changed-By and changelog text.
  await page.locator("tbody tr[data-source=hostile]").first().waitFor({ timeout: 20000 });
  const text = await page.textContent("table.events");
  check(text.includes("<img src=x onerror="), "the hostile Changed-By is shown as text");
  await page.reload();
  check((await page.textContent("table.events")).includes("<img src=x onerror="), "and as text when rendered by the server");
  await page.goto(base + "/mini_buildd/sources/hostile/");
  await page.goto(base + "/mini_buildd/events/?source=%3Cscript%3Ewindow.__pwned%3D1%3C%2Fscript%3E");
  check((await page.inputValue("#f-source")) === "<script>window.__pwned=1</script>", "a hostile filter value stays text");
  const r = await page.goto(base + "/mini_buildd/sources/%3Cimg%20src=x%20onerror=window.__pwned=1%3E/");
  check(r.status() === 404, "an invalid source name is a 404");
  for (const p of context.pages()) {
    check(await p.evaluate(() => window.__pwned === undefined), "no injected script ran");
    check((await p.locator("main img, main script").count()) === 0, "no markup was injected into the page");
  }
  await shot("hostile");
}

try {
  if (phase === "admin") {
    await loginPageIsInTheLayout();
    await login();
    await shot("home");
    await createRepositoryAndPca();
    await createSourceFromFields();
  } else if (phase === "tracker") {
    await login();
    await trackerMigrateAndLiveEvent();
    await crontabRunNow();
    await screenshots();
  } else if (phase === "anonymous") {
    await anonymousIsRefused();
  } else if (phase === "hostile") {
    await hostileInputIsEscaped();
  } else {
    throw new Error("unknown phase " + phase);
  }
  console.log(`phase ${phase}: ok`);
} catch (e) {
  console.error(`phase ${phase}: ${e.stack || e}`);
  await shot(`failed-${phase}`).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
