-- flashhost.mysql against a real MariaDB.  Run inside the runtime, where the
-- binding lives:
--   build/flashhost --run /usr/bin/busted --ignore-lua -o TAP spec/integration/mysql_spec.lua
-- Reads MYSQL_HOST (127.0.0.1), MYSQL_PORT (3306), MYSQL_USER (flashuser),
-- MYSQL_PASSWORD (flashpass), MYSQL_DATABASE (flash_sale).  The restart test
-- stops and starts that server with scripts/stack (STACK_DIR and MYSQL_PORT
-- from the environment), so the stack must be one scripts/stack started.
-- Works in a scratch table of its own, dropped at the end.
local ok_core, core = pcall(require, "flashhost.core")
if not ok_core then
  error("mysql_spec needs the flashhost runtime: run busted under `flashhost --run`", 0)
end
local mysql = require "flashhost.mysql"
local timer = require "flashhost.timer"

local REPO = os.getenv("FH_REPO") or "."
local STACK = ("%s/scripts/stack"):format(REPO)

local function now() return core.mono() end

-- Polls cond() every `step` ms until it returns a truthy value or `limit` ms passed.
local function eventually(limit, cond, step)
  local deadline = now() + limit
  repeat
    local v = cond()
    if v then return v end
    timer.sleep(step or 20)
  until now() > deadline
  return cond()
end

local function sh(cmd)
  local rc = os.execute(cmd .. " >/dev/null 2>&1")
  return rc == 0 or rc == true
end

describe("flashhost.mysql", function()
  local db, T

  setup(function()
    db = mysql.pool { size = 4 }
    T = "spec_mysql_" .. core.id()
    assert(db:query(([[CREATE TABLE %s (
      id INT AUTO_INCREMENT PRIMARY KEY,
      k VARCHAR(64) NOT NULL UNIQUE,
      v MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
      b MEDIUMBLOB NULL,
      n INT NULL
    ) ENGINE=InnoDB]]):format(T)))
  end)

  teardown(function()
    if db then
      db:query("DROP TABLE IF EXISTS " .. T)
      db:close()
    end
  end)

  before_each(function()
    assert(db:query("DELETE FROM " .. T))
  end)

  it("answers SELECT 1 with rows of strings and the column names", function()
    local rows, err = db:query("SELECT 1 AS one, 'two' AS two")
    assert.is_nil(err)
    assert.are.equal(1, #rows)
    assert.are.same({ one = "1", two = "two" }, rows[1])
    assert.are.same({ "one", "two" }, rows.columns)
  end)

  it("answers other statements with affected_rows and insert_id", function()
    local res = assert(db:query("INSERT INTO " .. T .. " (k, v) VALUES (?, ?)", "a", "x"))
    assert.are.equal(1, res.affected_rows)
    assert.is_true(res.insert_id > 0)
    local res2 = assert(db:query("UPDATE " .. T .. " SET v = ? WHERE k = ?", "y", "a"))
    assert.are.equal(1, res2.affected_rows)
    assert.are.equal(0, res2.insert_id)
    local empty = assert(db:query("SELECT * FROM " .. T .. " WHERE k = ?", "nope"))
    assert.are.equal(0, #empty)
    assert.are.same({ "id", "k", "v", "b", "n" }, empty.columns)
  end)

  it("round-trips hostile strings exactly through placeholders", function()
    local nasty = {
      "O'Brien", 'say "hi"', "back\\slash\\", "trailing\\", "nul\0byte\0", "\0",
      "line\nbreak\r\ttab\026ctrl-z", "unicode: héllo wörld ✓ 日本語 🎟️",
      "'; DROP TABLE " .. T .. "; --", "1' OR '1'='1", "\\'; SELECT 1; -- ",
      "?", "a ? b ?", "%s %d", "", string.rep("x'", 5000),
    }
    for i, s in ipairs(nasty) do
      assert(db:query("INSERT INTO " .. T .. " (k, v) VALUES (?, ?)", "s" .. i, s))
    end
    for i, s in ipairs(nasty) do
      local rows = assert(db:query("SELECT v, LENGTH(v) AS len FROM " .. T .. " WHERE k = ?", "s" .. i))
      assert.are.equal(1, #rows)
      assert.are.equal(s, rows[1].v)
      assert.are.equal(tostring(#s), rows[1].len)
    end
    -- Matching by the hostile value itself finds exactly that row.
    local rows = assert(db:query("SELECT k FROM " .. T .. " WHERE v = ?", "1' OR '1'='1"))
    assert.are.same({ { k = "s10" } }, { rows[1] })
    local count = assert(db:query("SELECT COUNT(*) AS c FROM " .. T))
    assert.are.equal(tostring(#nasty), count[1].c)
  end)

  it("round-trips every byte value in a blob", function()
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local all = table.concat(bytes):rep(3)
    assert(db:query("INSERT INTO " .. T .. " (k, b) VALUES (?, ?)", "bin", all))
    local rows = assert(db:query("SELECT b FROM " .. T .. " WHERE k = ?", "bin"))
    assert.are.equal(all, rows[1].b)
  end)

  it("leaves a ? inside quoted literals and comments alone", function()
    local rows = assert(db:query("SELECT 'what?' AS q, \"why?\" AS w, ? AS p /* ? */ -- ?\n", "x"))
    assert.are.same({ q = "what?", w = "why?", p = "x" }, rows[1])
  end)

  it("formats numbers, booleans and NULL", function()
    local rows = assert(db:query("SELECT ? AS i, ? AS big, ? AS neg, ? AS f, ? AS t, ? AS fa, ? AS n1, ? AS n2",
      42, 1e15, -7, 0.5, true, false, nil, mysql.null))
    local r = rows[1]
    assert.are.equal("42", r.i)
    assert.are.equal("1000000000000000", r.big)
    assert.are.equal("-7", r.neg)
    assert.are.equal("0.5", r.f)
    assert.are.equal("1", r.t)
    assert.are.equal("0", r.fa)
    assert.are.equal(mysql.null, r.n1)
    assert.are.equal(mysql.null, r.n2)
  end)

  it("stores and reads NULL", function()
    assert(db:query("INSERT INTO " .. T .. " (k, v, n) VALUES (?, ?, ?)", "null", nil, mysql.null))
    assert(db:query("INSERT INTO " .. T .. " (k, v, n) VALUES (?, ?, ?)", "set", "", 0))
    local rows = assert(db:query("SELECT k, v, n FROM " .. T .. " ORDER BY k"))
    assert.are.same({ k = "null", v = mysql.null, n = mysql.null }, rows[1])
    assert.are.same({ k = "set", v = "", n = "0" }, rows[2])
    local isnull = assert(db:query("SELECT k FROM " .. T .. " WHERE v IS NULL"))
    assert.are.same({ { k = "null" } }, { isnull[1] })
    assert.are.equal(1, #isnull)
  end)

  it("raises on a wrong number of parameters or an unusable value, and stays usable", function()
    assert.has_error(function() db:query("SELECT ?, ?", 1) end,
      "the statement has 2 placeholders but 1 parameter was given")
    assert.has_error(function() db:query("SELECT 1", 1) end)
    assert.has_error(function() db:query("SELECT ?", {}) end)
    assert.has_error(function() db:query("SELECT ?", 0 / 0) end)
    -- Each raise gave its connection back: more raises than connections, then a query.
    for _ = 1, 10 do pcall(db.query, db, "SELECT ?") end
    local rows, err = db:query("SELECT 1 AS x")
    assert.is_nil(err)
    assert.are.equal("1", rows[1].x)
    assert.are.equal(0, db:stats().waiting)
  end)

  it("raises where a task cannot wait, without losing a connection", function()
    local open = db:stats().open
    -- A gsub callback cannot yield.
    assert.has_error(function()
      string.gsub("x", "x", function() db:query("SELECT 1") end)
    end, "this call does I/O and must run inside a flashhost task (a handler, a hook or flashhost.spawn)")
    assert.are.equal(open, db:stats().open)
    assert(db:query("SELECT 1"))
  end)

  it("reports a duplicate key by name, number and message", function()
    assert(db:query("INSERT INTO " .. T .. " (k) VALUES (?)", "dup"))
    local res, err = db:query("INSERT INTO " .. T .. " (k) VALUES (?)", "dup")
    assert.is_nil(res)
    assert.matches("^ER_DUP_ENTRY %(1062%): Duplicate entry 'dup' for key", err)
    -- An SQL error does not cost the connection.
    assert(db:query("SELECT 1"))
    local _, perr = db:query("SELEKT 1")
    assert.matches("^ER_PARSE_ERROR %(1064%): ", perr)
  end)

  it("answers a CALL with its first result set and stays in sync", function()
    local P = T .. "_p"
    assert(db:query(("CREATE PROCEDURE %s(IN x INT) BEGIN SELECT x AS a; SELECT x + 1 AS b; END"):format(P)))
    finally(function() db:query("DROP PROCEDURE IF EXISTS " .. P) end)
    -- One connection, so the next statements run right behind the CALL's extra results.
    local pool = mysql.pool { size = 1 }
    for i = 1, 3 do
      local rows, err = pool:query(("CALL %s(?)"):format(P), i)
      assert.is_nil(err)
      assert.are.same({ { a = tostring(i) } }, { rows[1] })
      local after = assert(pool:query("SELECT 7 AS s"))
      assert.are.equal("7", after[1].s)
    end
    pool:close()
  end)

  it("inserts 500 rows in one statement", function()
    local marks, params = {}, {}
    for i = 1, 500 do
      marks[i] = "(?, ?, ?)"
      params[#params + 1] = ("row%03d"):format(i)
      params[#params + 1] = "value " .. i .. " it's"
      params[#params + 1] = i
    end
    local res = assert(db:query("INSERT INTO " .. T .. " (k, v, n) VALUES " .. table.concat(marks, ", "),
      unpack(params)))
    assert.are.equal(500, res.affected_rows)
    local rows = assert(db:query("SELECT COUNT(*) AS c, SUM(n) AS s, MIN(id) AS first FROM " .. T))
    assert.are.same({ c = "500", s = tostring(500 * 501 / 2), first = tostring(res.insert_id) }, rows[1])
    local r = assert(db:query("SELECT v FROM " .. T .. " WHERE k = ?", "row250"))
    assert.are.equal("value 250 it's", r[1].v)
  end)

  it("serves 50 tasks x 20 queries on a pool of 4", function()
    local pool = mysql.pool { size = 4 }
    local done, failures, ids = 0, {}, {}
    for t = 1, 50 do
      core.spawn(function()
        for q = 1, 20 do
          local rows, err = pool:query("SELECT ? AS t, ? AS q, CONNECTION_ID() AS cid", t, q)
          if not rows then
            failures[#failures + 1] = err
          elseif rows[1].t ~= tostring(t) or rows[1].q ~= tostring(q) then
            failures[#failures + 1] = ("task %d query %d got %s/%s"):format(t, q, rows[1].t, rows[1].q)
          else
            ids[rows[1].cid] = true
          end
        end
        done = done + 1
      end)
    end
    assert.is_true(eventually(30000, function() return done == 50 end), "tasks finished: " .. done)
    assert.are.same({}, failures)
    local n = 0
    for _ in pairs(ids) do n = n + 1 end
    assert.is_true(n >= 1 and n <= 4, "distinct connections: " .. n)
    local st = pool:stats()
    assert.is_true(st.open <= 4 and st.waiting == 0, "stats " .. st.open .. "/" .. st.waiting)
    pool:close()
  end)

  it("serves waiting callers in FIFO order", function()
    local pool = mysql.pool { size = 1 }
    local order, done = {}, 0
    for i = 1, 6 do
      core.spawn(function()
        assert(pool:query("SELECT SLEEP(0.02)"))
        order[#order + 1] = i
        done = done + 1
      end)
    end
    assert.is_true(eventually(10000, function() return done == 6 end))
    assert.are.same({ 1, 2, 3, 4, 5, 6 }, order)
    pool:close()
  end)

  it("gives up waiting for a connection after pool_timeout_ms", function()
    local pool = mysql.pool { size = 1, pool_timeout_ms = 200 }
    local held = false
    core.spawn(function()
      held = true
      pool:query("SELECT SLEEP(1)")
      held = false
    end)
    assert.is_true(eventually(2000, function() return held end))
    local t0 = now()
    local res, err = pool:query("SELECT 1")
    local took = now() - t0
    assert.is_nil(res)
    assert.are.equal("pool timeout", err)
    assert.is_true(took >= 150 and took < 900, "took " .. took .. " ms")
    assert.is_true(eventually(5000, function() return not held end))
    assert(pool:query("SELECT 1"))
    pool:close()
  end)

  it("times a slow query out and recovers on a new connection", function()
    local pool = mysql.pool { size = 1, query_timeout_ms = 300 }
    local before = assert(pool:query("SELECT CONNECTION_ID() AS id"))[1].id
    local t0 = now()
    local res, err = pool:query("SELECT SLEEP(3)")
    local took = now() - t0
    assert.is_nil(res)
    assert.matches("^connection lost: timeout", err)
    assert.is_true(took >= 250 and took < 1500, "took " .. took .. " ms")
    local rows = assert(pool:query("SELECT CONNECTION_ID() AS id"))
    assert.are_not.equal(before, rows[1].id)
    pool:close()
  end)

  it("commits a transaction and returns the function's values", function()
    local a, b = db:transaction(function(tx)
      assert(tx:query("INSERT INTO " .. T .. " (k) VALUES (?)", "tx1"))
      assert(tx:query("INSERT INTO " .. T .. " (k) VALUES (?)", "tx2"))
      -- Not committed yet: another connection does not see the rows.
      local other = assert(db:query("SELECT COUNT(*) AS c FROM " .. T))
      assert(other[1].c == "0", "uncommitted rows visible")
      return "done", 2
    end)
    assert.are.equal("done", a)
    assert.are.equal(2, b)
    local rows = assert(db:query("SELECT k FROM " .. T .. " ORDER BY k"))
    assert.are.same({ { k = "tx1" }, { k = "tx2" } }, { rows[1], rows[2] })
    assert.is_true(db:transaction(function(tx) assert(tx:query("SELECT 1")) end))
  end)

  it("rolls back when the function raises", function()
    local res, err = db:transaction(function(tx)
      assert(tx:query("INSERT INTO " .. T .. " (k) VALUES (?)", "gone"))
      error("boom")
    end)
    assert.is_nil(res)
    assert.matches("boom", err)
    local rows = assert(db:query("SELECT COUNT(*) AS c FROM " .. T))
    assert.are.equal("0", rows[1].c)
  end)

  it("rolls back when the function returns nil, err", function()
    local res, err = db:transaction(function(tx)
      assert(tx:query("INSERT INTO " .. T .. " (k) VALUES (?)", "first"))
      local r, e = tx:query("INSERT INTO " .. T .. " (k) VALUES (?)", "first")
      if not r then return nil, e end
      return true
    end)
    assert.is_nil(res)
    assert.matches("^ER_DUP_ENTRY", err)
    local rows = assert(db:query("SELECT COUNT(*) AS c FROM " .. T))
    assert.are.equal("0", rows[1].c)
  end)

  it("refuses a tx used after its transaction ended", function()
    local saved
    assert(db:transaction(function(tx) saved = tx return true end))
    assert.has_error(function() saved:query("SELECT 1") end, "the transaction is over")
  end)

  it("fails promptly when nothing listens, and says so once the pool is closed", function()
    local pool = mysql.pool { port = 1, connect_timeout_ms = 1000 }
    local t0 = now()
    local res, err = pool:query("SELECT 1")
    assert.is_nil(res)
    assert.matches("^connection lost: cannot connect", err)
    assert.is_true(now() - t0 < 1500)
    assert.are.equal(0, pool:stats().open)
    pool:close()
    local _, cerr = pool:query("SELECT 1")
    assert.are.equal("pool closed", cerr)
  end)

  it("resolves a host name on the loop", function()
    local pool = mysql.pool { host = "localhost", size = 1 }
    local rows, err = pool:query("SELECT 1 AS x")
    assert.is_nil(err)
    assert.are.equal("1", rows[1].x)
    pool:close()
    local bad = mysql.pool { host = "no-such-host.invalid", size = 1 }
    local res, berr = bad:query("SELECT 1")
    assert.is_nil(res)
    assert.matches("^connection lost: cannot connect.*no%-such%-host", berr)
    bad:close()
  end)

  it("replaces an idle connection the server killed, without an error", function()
    local pool = mysql.pool { size = 1 }
    local id = assert(pool:query("SELECT CONNECTION_ID() AS id"))[1].id
    assert(db:query("KILL CONNECTION ?", tonumber(id)))
    assert.is_true(eventually(5000, function()
      local r = assert(db:query("SELECT COUNT(*) AS c FROM information_schema.PROCESSLIST WHERE ID = ?", tonumber(id)))
      return r[1].c == "0"
    end))
    local rows, err = pool:query("SELECT CONNECTION_ID() AS id")
    assert.is_nil(err)
    assert.are_not.equal(id, rows[1].id)
    pool:close()
  end)

  it("lets the driver raise when one connection is asked two things at once", function()
    local driver = require "flashhost.mysql.driver"
    local c = assert(driver.connect {
      host = os.getenv("MYSQL_HOST") or "127.0.0.1", port = tonumber(os.getenv("MYSQL_PORT")) or 3306,
      user = os.getenv("MYSQL_USER") or "flashuser", password = os.getenv("MYSQL_PASSWORD") or "flashpass",
      database = os.getenv("MYSQL_DATABASE") or "flash_sale", timeout_ms = 2000,
    })
    local first
    core.spawn(function() first = { c:query("SELECT SLEEP(0.2) AS s") } end)
    assert.is_truthy(eventually(2000, function() return tostring(c):find("busy") end))
    assert.has_error(function() c:query("SELECT 1") end,
      "the connection is busy: one statement at a time per connection")
    assert.is_true(eventually(3000, function() return first ~= nil end))
    assert.are.equal("0", first[1][1].s)
    c:close()
    assert.has_error(function() c:query("SELECT 1") end, "the connection is closed")
  end)

  it("closes the connections of a collected pool", function()
    local function open_one()
      local pool = mysql.pool { size = 1 }
      return assert(pool:query("SELECT CONNECTION_ID() AS id"))[1].id
    end
    local id = open_one()
    local function gone()
      collectgarbage()
      collectgarbage()
      local rows = assert(db:query("SELECT COUNT(*) AS c FROM information_schema.PROCESSLIST WHERE ID = ?",
        tonumber(id)))
      return rows[1].c == "0"
    end
    assert.is_true(eventually(5000, gone, 50), "connection " .. id .. " still open")
  end)

  describe("when the server restarts", function()
    local function up() return sh(STACK .. " up mysql") end

    it("fails promptly while it is down and recovers without a new pool", function()
      assert(sh(STACK .. " status mysql"),
        "scripts/stack does not run MariaDB on MYSQL_PORT here (set STACK_DIR and MYSQL_PORT)")
      local pool = mysql.pool { size = 2, connect_timeout_ms = 2000 }
      -- Two idle connections that will be stale after the restart, and one in flight.
      local a, b = 0, 0
      core.spawn(function() assert(pool:query("SELECT 1")) a = 1 end)
      core.spawn(function() assert(pool:query("SELECT 1")) b = 1 end)
      assert.is_true(eventually(5000, function() return a + b == 2 end))
      assert.are.equal(2, pool:stats().idle)
      local inflight
      core.spawn(function() inflight = { pool:query("SELECT SLEEP(20)") } end)

      finally(up)
      assert(sh(STACK .. " down mysql"), "could not stop MariaDB")
      assert.is_true(eventually(5000, function() return inflight ~= nil end), "in-flight query hangs")
      assert.is_nil(inflight[1])
      assert.is_string(inflight[2])

      for _ = 1, 5 do
        local t0 = now()
        local res, err = pool:query("SELECT 1")
        assert.is_nil(res)
        assert.matches("^connection lost: ", err)
        assert.is_true(now() - t0 < 2500, "took " .. (now() - t0) .. " ms")
      end
      local tres, terr = pool:transaction(function(tx) return tx:query("SELECT 1") end)
      assert.is_nil(tres)
      assert.matches("^connection lost: ", terr)

      assert(up(), "could not start MariaDB again")
      local rows = eventually(30000, function() return pool:query("SELECT 1 AS x") end, 100)
      assert.is_truthy(rows, "no answer after the restart")
      assert.are.equal("1", rows[1].x)
      for _ = 1, 10 do assert(pool:query("SELECT 1")) end
      assert(pool:transaction(function(tx) return tx:query("SELECT 1") end))
      pool:close()
    end)
  end)
end)
