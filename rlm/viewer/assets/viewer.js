// rlm trajectory viewer. Renders the tree embedded in #rlm-data lazily: a node's children
// are built the first time it is opened, long lists a page at a time. Every piece of text
// from the trajectory goes in through textContent, never as HTML.
(function () {
  "use strict";

  var PAGE = 100; // children shown at a time
  var PREVIEW = 2000; // characters shown before "show all"
  var EXPAND_ALL_LIMIT = 2000; // nodes "expand all" opens at most

  var data = JSON.parse(document.getElementById("rlm-data").textContent);
  var app = document.getElementById("app");

  // -- small helpers ----------------------------------------------------------------------

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function int(n) {
    return Number(n || 0).toLocaleString("en-US");
  }

  function cost(c) {
    if (c === null || c === undefined) return "cost n/a";
    if (c === 0) return "$0";
    return "$" + (c < 0.01 ? c.toFixed(5) : c.toFixed(4));
  }

  function seconds(s) {
    if (s === null || s === undefined) return null;
    return s < 1 ? Math.round(s * 1000) + " ms" : s.toFixed(2) + " s";
  }

  function tokens(i, o) {
    return int(i) + " in / " + int(o) + " out tokens";
  }

  function plural(n, word) {
    return int(n) + " " + word + (n === 1 ? "" : "s");
  }

  function oneLine(text, max) {
    var t = String(text || "").replace(/\s+/g, " ").trim();
    return t.length > max ? t.slice(0, max - 1) + "…" : t;
  }

  function badge(text, kind) {
    return el("span", "badge" + (kind ? " " + kind : ""), text);
  }

  // -- collapsible nodes ------------------------------------------------------------------

  var allNodes = [];

  function node(kind, title, badges, summary, build, open) {
    var wrap = el("div", "node " + kind);
    var head = el("div", "head");
    head.setAttribute("role", "button");
    head.setAttribute("aria-expanded", "false");
    head.tabIndex = 0;
    head.appendChild(el("span", "twisty", "▶"));
    head.appendChild(el("span", "title", title));
    badges.forEach(function (b) {
      if (b) head.appendChild(b);
    });
    if (summary) head.appendChild(el("span", "summary", summary));
    var body = el("div", "body");
    body.hidden = true;
    wrap.appendChild(head);
    wrap.appendChild(body);
    var built = false;
    function toggle(force) {
      var show = force === undefined ? body.hidden : force;
      if (show && !built) {
        built = true;
        build(body);
      }
      body.hidden = !show;
      wrap.classList.toggle("open", show);
      head.setAttribute("aria-expanded", String(show));
    }
    head.addEventListener("click", function () {
      toggle();
    });
    head.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        toggle();
      }
    });
    wrap.rlmToggle = toggle;
    allNodes.push(wrap);
    if (open) toggle(true);
    return wrap;
  }

  function paged(parent, items, render) {
    var shown = 0;
    var more = el("button", "more");
    function next() {
      var end = Math.min(items.length, shown + PAGE);
      var frag = document.createDocumentFragment();
      for (; shown < end; shown++) frag.appendChild(render(items[shown], shown));
      parent.insertBefore(frag, more);
      if (shown >= items.length) {
        more.remove();
      } else {
        more.textContent =
          "show " + int(Math.min(PAGE, items.length - shown)) + " more (" + int(shown) +
          " of " + int(items.length) + " shown)";
      }
    }
    parent.appendChild(more);
    more.addEventListener("click", next);
    next();
  }

  function textSection(label, text, cls, trueChars) {
    var box = el("div", "section" + (cls ? " " + cls : ""));
    box.appendChild(el("div", "label", label));
    var value = String(text || "");
    var pre = el("pre");
    box.appendChild(pre);
    if (value.length > PREVIEW) {
      pre.textContent = value.slice(0, PREVIEW);
      var all = el("button", "more", "show all " + int(value.length) + " characters");
      all.addEventListener("click", function () {
        pre.textContent = value;
        all.remove();
      });
      box.appendChild(all);
    } else {
      pre.textContent = value;
    }
    if (trueChars && trueChars > value.length + 100) {
      box.appendChild(
        el("div", "note", int(trueChars) + " characters in full; the trajectory keeps " +
          int(value.length) + ".")
      );
    }
    return box;
  }

  // -- Python highlighting (spans with textContent, nothing parsed as HTML) ---------------

  var KEYWORDS = new Set((
    "False None True and as assert async await break class continue def del elif else " +
    "except finally for from global if import in is lambda nonlocal not or pass raise " +
    "return try while with yield match case"
  ).split(" "));
  var BUILTINS = new Set((
    "print len range sum min max sorted list dict set tuple str int float bool enumerate " +
    "zip map filter any all abs round open isinstance type repr reversed divmod iter next " +
    "super object Exception ValueError KeyError TypeError"
  ).split(" "));
  var HELPERS = new Set((
    "context llm_query llm_query_batched rlm_query rlm_query_batched FINAL FINAL_VAR SHOW_VARS"
  ).split(" "));
  var TOKEN = new RegExp(
    [
      "(#[^\\n]*)",
      "((?:[rRbBuUfF]{1,2})?(?:\"\"\"[\\s\\S]*?(?:\"\"\"|$)|'''[\\s\\S]*?(?:'''|$)|" +
        "\"(?:\\\\.|[^\"\\\\\\n])*\"?|'(?:\\\\.|[^'\\\\\\n])*'?))",
      "(\\b\\d[\\d_]*(?:\\.\\d*)?(?:[eE][+-]?\\d+)?j?\\b)",
      "(@[A-Za-z_][\\w.]*)",
      "([A-Za-z_]\\w*)",
    ].join("|"),
    "g"
  );

  function highlight(code, pre) {
    var frag = document.createDocumentFragment();
    var last = 0;
    var afterDef = false;
    var m;
    TOKEN.lastIndex = 0;
    while ((m = TOKEN.exec(code)) !== null) {
      if (m[0] === "") {
        TOKEN.lastIndex++;
        continue;
      }
      if (m.index > last) frag.appendChild(document.createTextNode(code.slice(last, m.index)));
      var cls = null;
      var word = m[5];
      if (m[1]) cls = "tok-com";
      else if (m[2]) cls = "tok-str";
      else if (m[3]) cls = "tok-num";
      else if (m[4]) cls = "tok-deco";
      else if (afterDef) cls = "tok-fn";
      else if (KEYWORDS.has(word)) cls = "tok-kw";
      else if (HELPERS.has(word)) cls = "tok-helper";
      else if (BUILTINS.has(word)) cls = "tok-bi";
      afterDef = word === "def" || word === "class";
      frag.appendChild(cls ? el("span", cls, m[0]) : document.createTextNode(m[0]));
      last = TOKEN.lastIndex;
    }
    if (last < code.length) frag.appendChild(document.createTextNode(code.slice(last)));
    pre.appendChild(frag);
  }

  function codeSection(code) {
    var box = el("div", "section code");
    box.appendChild(el("div", "label", "code"));
    var pre = el("pre", "code");
    highlight(String(code || ""), pre);
    box.appendChild(pre);
    return box;
  }

  // -- the tree ---------------------------------------------------------------------------

  function costBadges(n) {
    var out = [];
    if (n.tokens_in || n.tokens_out) out.push(badge(tokens(n.tokens_in, n.tokens_out)));
    if (n.cost) out.push(badge(cost(n.cost)));
    return out;
  }

  function answerBox(label, answer, failed) {
    var box = el("div", "answer" + (failed ? " none" : ""));
    box.appendChild(el("span", "label", label));
    box.appendChild(document.createTextNode(answer));
    return box;
  }

  function runStatus(run) {
    if (run.status === "failed") return badge("failed", "bad");
    if (!run.result) return badge("unfinished", "warn");
    var reason = run.result.stop_reason;
    return badge(reason, reason === "final" ? "ok" : reason === "max_iterations" ? "warn" : "bad");
  }

  function runDuration(run) {
    if (run.result) return seconds(run.result.duration_s);
    return seconds(run.ended - run.started);
  }

  function renderRun(run, open) {
    var title = run.depth === 0 ? "Run" : "Child run (depth " + run.depth + ")";
    if (run.depth === 0 && run.turn) title = "Turn " + run.turn;
    var badges = [
      badge(run.model, "model"),
      runStatus(run),
      badge(plural(run.iterations.length, "iteration")),
    ].concat(costBadges(run), [badge(runDuration(run))]);
    var summary = run.depth === 0 ? "" : oneLine(run.query, 90);
    return node("run", title, badges, summary, function (body) {
      if (run.depth !== 0) body.appendChild(textSection("query", run.query, "query"));
      body.appendChild(
        el(
          "div",
          "note",
          "context: " + run.context_type + ", " + int(run.context_chars) + " characters · " +
            "sub-model " + run.sub_model + " · up to " + plural(run.max_iterations, "iteration") +
            " · max depth " + run.max_depth
        )
      );
      var list = el("div", "children");
      body.appendChild(list);
      paged(list, run.iterations, function (it) {
        return renderIteration(it);
      });
      if (run.orphans.length) {
        body.appendChild(el("div", "note", "sub-calls made outside any code block:"));
        var orphans = el("div", "children");
        body.appendChild(orphans);
        paged(orphans, run.orphans, renderSubcall);
      }
      body.appendChild(outcome(run));
    }, open);
  }

  function outcome(run) {
    if (run.status === "failed" && run.error) {
      return answerBox("run failed: " + run.error.type, run.error.message, true);
    }
    if (run.result && run.result.answer !== null) {
      return answerBox("final answer (" + run.result.stop_reason + ")", run.result.answer, false);
    }
    if (run.result) {
      var why = run.result.stop_reason + (run.result.error ? ": " + run.result.error : "");
      return answerBox("no answer", why, true);
    }
    return answerBox("no answer", "the trajectory ends before the run finished", true);
  }

  function renderIteration(it) {
    var subcalls = 0;
    it.blocks.forEach(function (b) {
      subcalls += b.subcalls.length;
    });
    var failed = it.blocks.some(function (b) {
      return b.error;
    });
    var badges = costBadges(it).concat([
      badge(seconds(it.ended - it.started)),
      it.blocks.length ? badge(plural(it.blocks.length, "code block")) : null,
      subcalls ? badge(plural(subcalls, "sub-call")) : null,
      failed ? badge("error", "bad") : null,
      it.final ? badge("final answer", "ok") : null,
    ]);
    var title = it.index ? "Iteration " + it.index : "Before the first iteration";
    var summary = it.final ? "FINAL: " + oneLine(it.final.answer, 70) : "";
    if (it.compactions.length) badges.push(badge("history compacted"));
    return node("iteration", title, badges, summary, function (body) {
      it.compactions.forEach(function (c) {
        body.appendChild(
          el(
            "div",
            "note",
            "history compacted: about " + int(c.tokens_before) + " → " + int(c.tokens_after) +
              " tokens (window " + int(c.window_tokens) + ")"
          )
        );
        body.appendChild(textSection("summary", c.summary, "query"));
      });
      it.calls.forEach(function (call) {
        body.appendChild(renderCall(call));
      });
      it.blocks.forEach(function (block) {
        body.appendChild(renderBlock(block));
      });
      if (it.final) {
        body.appendChild(answerBox("final answer (from " + it.final.source + ")", it.final.answer));
      }
    });
  }

  function renderCall(call) {
    var title =
      call.purpose === "final" ? "Model reply (asked for a final answer)" : "Model reply";
    var badges = [badge(call.model, "model")].concat(costBadges(call), [
      call.latency_s !== null ? badge(seconds(call.latency_s)) : null,
      call.retries.length ? badge(plural(call.retries.length, "retry"), "warn") : null,
      call.error ? badge("error", "bad") : null,
      call.done ? null : badge("no reply recorded", "warn"),
    ]);
    return node("call", title, badges, oneLine(call.text, 80), function (body) {
      body.appendChild(
        el("div", "note", "prompt: " + plural(call.message_count, "message") + ", " +
          int(call.prompt_chars) + " characters")
      );
      if (call.last_message) body.appendChild(textSection("last message sent", call.last_message));
      call.retries.forEach(function (r) {
        body.appendChild(el("div", "note", "retry " + r.attempt + " after " + seconds(r.wait_s) +
          ": " + r.error));
      });
      if (call.error) body.appendChild(textSection("error", call.error, "error"));
      body.appendChild(textSection("reply", call.text, "reply", call.text_chars));
    });
  }

  function renderBlock(block) {
    var badges = [
      block.duration_s !== null ? badge(seconds(block.duration_s)) : badge("did not finish", "warn"),
      block.subcalls.length ? badge(plural(block.subcalls.length, "sub-call")) : null,
      block.tools && block.tools.length ? badge(plural(block.tools.length, "tool call")) : null,
    ].concat(costBadges(block), [
      block.error ? badge("error", "bad") : null,
      block.restarted ? badge("REPL restarted", "warn") : null,
    ]);
    var firstLine = oneLine(String(block.code).split("\n")[0], 70);
    return node("block", "Code block " + block.index, badges, firstLine, function (body) {
      body.appendChild(codeSection(block.code));
      if (block.stdout) body.appendChild(textSection("output", block.stdout, "stdout"));
      if (block.stderr) body.appendChild(textSection("stderr", block.stderr, "stderr"));
      if (block.error) body.appendChild(textSection("error", block.error, "error"));
      if (block.done && !block.stdout && !block.stderr && !block.error) {
        body.appendChild(el("div", "note", "(no output)"));
      }
      if (block.restarted) {
        body.appendChild(el("div", "note", "The REPL worker was restarted: variables were lost."));
      }
      if (block.subcalls.length) {
        var box = el("div", "section");
        box.appendChild(el("div", "label", "sub-calls (" + int(block.subcalls.length) + ")"));
        body.appendChild(box);
        paged(box, block.subcalls, renderSubcall);
      }
      if (block.tools && block.tools.length) {
        var tools = el("div", "section");
        tools.appendChild(el("div", "label", "tool calls (" + int(block.tools.length) + ")"));
        block.tools.forEach(function (t) {
          var line = t.name + "(" + oneLine(t.arguments, 200) + ")" +
            (t.duration_s !== null ? " · " + seconds(t.duration_s) : "") + " → " +
            (t.ok === false ? t.error : t.ok === null ? "(no result recorded)" : oneLine(t.result, 300));
          tools.appendChild(el("div", t.ok === false ? "note error" : "note", line));
        });
        body.appendChild(tools);
      }
    }, true);
  }

  function renderSubcall(sub) {
    var name = sub.recursive ? "rlm_query" : "llm_query";
    if (sub.batch_size !== null) name += "_batched [" + (sub.batch_index + 1) + "/" + sub.batch_size + "]";
    var status =
      sub.ok === null ? badge("no reply recorded", "warn") : sub.ok ? null : badge("error", "bad");
    var badges = [badge(sub.model, "model"), status].concat(costBadges(sub), [
      sub.duration_s !== null ? badge(seconds(sub.duration_s)) : null,
    ]);
    var summary = oneLine(sub.prompt, 60) + (sub.ok ? "  →  " + oneLine(sub.response, 40) : "");
    return node("subcall", name, badges, summary, function (body) {
      body.appendChild(textSection("prompt", sub.prompt, "prompt", sub.prompt_chars));
      if (sub.error) body.appendChild(textSection("error", sub.error, "error"));
      if (sub.ok) body.appendChild(textSection("response", sub.response, "response", sub.response_chars));
      if (sub.child) body.appendChild(renderRun(sub.child, false));
    });
  }

  // -- the page ---------------------------------------------------------------------------

  function header() {
    var frag = document.createDocumentFragment();
    frag.appendChild(el("h1", null, "rlm trajectory"));
    var sub = (data.source ? data.source + " · " : "") + plural(data.events, "event") + " · " +
      plural(data.runs.length, "top-level run");
    frag.appendChild(el("div", "sub", sub));
    if (data.skipped_lines) {
      frag.appendChild(el("div", "problems", plural(data.skipped_lines, "line") +
        " of the file could not be read and were skipped (a run cut off mid-write?)."));
    }
    var bar = el("div", "toolbar");
    var expand = el("button", null, "expand all");
    var collapse = el("button", null, "collapse all");
    expand.addEventListener("click", function () {
      // Breadth-first, up to a limit, so a huge trajectory cannot freeze the page.
      var opened = 0;
      for (var i = 0; i < allNodes.length && opened < EXPAND_ALL_LIMIT; i++) {
        if (!allNodes[i].classList.contains("open")) {
          allNodes[i].rlmToggle(true);
          opened++;
        }
      }
    });
    collapse.addEventListener("click", function () {
      allNodes.forEach(function (n) {
        if (n.classList.contains("open")) n.rlmToggle(false);
      });
    });
    bar.appendChild(expand);
    bar.appendChild(collapse);
    frag.appendChild(bar);
    return frag;
  }

  function summaryCard(run) {
    var card = el("div", "card");
    if (run.turn) card.appendChild(el("div", "note", "Turn " + run.turn + " of a session"));
    card.appendChild(el("div", "query", run.query));
    card.appendChild(outcome(run));
    var stats = el("div", "stats");
    function stat(label, value) {
      var s = el("span");
      s.appendChild(document.createTextNode(label + " "));
      s.appendChild(el("b", null, value));
      stats.appendChild(s);
    }
    var r = run.result;
    stat("model", run.model + (run.sub_model !== run.model ? " → " + run.sub_model : ""));
    stat("stop", r ? r.stop_reason : run.status);
    stat("iterations", int(run.iterations.length));
    var spent = r ? r.cost_usd : run.cost;
    if (r) {
      stat("sub-calls", int(r.sub_calls));
      stat("code blocks", int(r.code_executions));
      stat("tokens", int(r.input_tokens) + " in / " + int(r.output_tokens) + " out");
    } else {
      stat("tokens", int(run.tokens_in) + " in / " + int(run.tokens_out) + " out");
    }
    stat("cost", spent === null || spent === undefined ? "n/a (no price known)" : cost(spent));
    stat("time", runDuration(run) || "?");
    card.appendChild(stats);
    return card;
  }

  app.textContent = "";
  app.appendChild(header());
  if (!data.runs.length) app.appendChild(el("div", "note", "This trajectory holds no run."));
  if (data.runs.length && data.runs[0].query) {
    document.title = "rlm · " + oneLine(data.runs[0].query, 60);
  }
  var runs = el("div", "runs");
  app.appendChild(runs);
  paged(runs, data.runs, function (run, i) {
    var box = el("div", "root");
    box.appendChild(summaryCard(run));
    var tree = el("div", "tree");
    tree.appendChild(renderRun(run, i === 0));
    box.appendChild(tree);
    return box;
  });
})();
