-- The deployment files (deploy/) cannot be started here (no Docker engine, no cluster):
-- they are parsed, and what refers to what is checked -- services and their dependencies,
-- distinct NODE_IDs, mounted paths, names shared between Kubernetes objects, the
-- Dockerfile's packages against scripts/deps, the nginx configuration's safety rules.
local yaml = require "lyaml"

local function read(path)
  local f = assert(io.open(path), "missing file " .. path)
  local s = f:read("*a")
  f:close()
  return s
end

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

local function is_dir(path)
  local r = os.execute("test -d '" .. path .. "'")
  return r == 0 or r == true
end

local function files_under(dir, pattern)
  local out = {}
  local p = io.popen("find " .. dir .. " -type f | sort")
  for l in p:lines() do if l:match(pattern) then out[#out + 1] = l end end
  p:close()
  return out
end

local function load_all(path) return yaml.load(read(path), { all = true }) end

-- The package list of scripts/deps (PKGS=( ... )).
local function deps_packages()
  local body = read("scripts/deps"):match("PKGS=%((.-)%)")
  local set = {}
  for name in body:gmatch("[%w%.%+%-]+") do set[name] = true end
  return set
end

local function host_of(url) return (url or ""):match("^%a+://([^:/@]+)") or (url or ""):match("^([^:/,]+)") end

describe("deploy files", function()
  it("parses every YAML file", function()
    local files = files_under("deploy", "%.ya?ml$")
    assert.is_true(#files >= 10, "YAML files found: " .. #files)
    for _, f in ipairs(files) do
      local ok, docs = pcall(load_all, f)
      assert.is_true(ok, f .. ": " .. tostring(docs))
      assert.is_true(#docs >= 1, f .. " is empty")
      for i, d in ipairs(docs) do assert.are.equal("table", type(d), ("%s document %d"):format(f, i)) end
    end
  end)

  describe("docker-compose.yml", function()
    local compose = load_all("deploy/docker-compose.yml")[1]
    local services = compose.services
    local apps = { "api1", "api2", "order-worker", "cleanup" }

    it("has every part of the system", function()
      for _, name in ipairs { "redis", "mariadb", "kafka", "migrate", "topics", "api1", "api2",
        "order-worker", "cleanup", "nginx", "prometheus", "grafana" } do
        assert.is_table(services[name], "service " .. name)
      end
    end)

    it("gives the API nodes distinct NODE_IDs in 0..31, and every app the shared services", function()
      local seen = {}
      for _, name in ipairs(apps) do
        local env = services[name].environment
        local id = tonumber(env.NODE_ID)
        assert.is_number(id, name .. " NODE_ID")
        assert.is_true(id >= 0 and id <= 31, name .. " NODE_ID in 0..31")
        assert.is_nil(seen[id], ("%s and %s share NODE_ID %d"):format(name, tostring(seen[id]), id))
        seen[id] = name
        assert.is_table(services[host_of(env.REDIS_URL)], name .. " REDIS_URL names a service")
        for broker in env.KAFKA_BROKERS:gmatch("[^,]+") do
          assert.is_table(services[host_of(broker)], name .. " KAFKA_BROKERS names a service")
        end
        assert.is_table(services[env.MYSQL_HOST], name .. " MYSQL_HOST names a service")
        for _, k in ipairs { "MYSQL_USER", "MYSQL_PASSWORD", "MYSQL_DATABASE", "ADMIN_PORT", "PORT" } do
          assert.is_truthy(env[k], name .. " sets " .. k)
        end
      end
      -- with AUTH=jwt and no JWT_SECRET given, the default is the placeholder the API refuses
      assert.are.equal("${JWT_SECRET:-" .. require("lib.auth").PLACEHOLDER_SECRET .. "}", services.api1.environment.JWT_SECRET)
      assert.are.equal("1", tostring(services.api1.environment.NODE_ID))
      assert.are.equal("2", tostring(services.api2.environment.NODE_ID))
    end)

    it("starts the apps that exist, from an image built by deploy/Dockerfile", function()
      for _, name in ipairs(apps) do
        local svc = services[name]
        assert.are.equal("..", svc.build.context)
        assert.is_true(exists(svc.build.context:gsub("^%.%.", ".") .. "/" .. svc.build.dockerfile), name .. " dockerfile")
        assert.is_true(exists(svc.command[1]), name .. " runs " .. tostring(svc.command[1]))
      end
      assert.are.equal("app/purchase.lua", services.api1.command[1])
      assert.are.equal("app/order_worker.lua", services["order-worker"].command[1])
      assert.are.equal("app/cleanup.lua", services.cleanup.command[1])
    end)

    it("depends only on services that exist, and waits for the set-up jobs", function()
      for name, svc in pairs(services) do
        local deps = svc.depends_on or {}
        for k, v in pairs(deps) do
          local dep = type(k) == "number" and v or k
          assert.is_table(services[dep], name .. " depends on unknown " .. tostring(dep))
          assert.are_not.equal(name, dep, name .. " depends on itself")
        end
      end
      for _, name in ipairs(apps) do
        local deps = services[name].depends_on
        assert.are.equal("service_completed_successfully", deps.migrate.condition, name)
        assert.are.equal("service_completed_successfully", deps.topics.condition, name)
      end
    end)

    it("runs Kafka in KRaft mode from the apache/kafka image", function()
      local k = services.kafka
      assert.matches("^apache/kafka:", k.image)
      assert.matches("controller", k.environment.KAFKA_PROCESS_ROLES)
      assert.matches("broker", k.environment.KAFKA_PROCESS_ROLES)
      assert.matches("@kafka:", k.environment.KAFKA_CONTROLLER_QUORUM_VOTERS)
      assert.is_nil(k.environment.KAFKA_ZOOKEEPER_CONNECT)
    end)

    it("publishes only nginx to the world, and no admin port at all", function()
      for name, svc in pairs(services) do
        for _, p in ipairs(svc.ports or {}) do
          p = tostring(p)
          if name ~= "nginx" then assert.matches("^127%.0%.0%.1:", p, name .. " publishes " .. p) end
          for _, app in ipairs(apps) do
            local admin = tostring(services[app].environment.ADMIN_PORT)
            assert.is_nil(p:match(":" .. admin .. "$"), name .. " publishes an admin port: " .. p)
          end
        end
      end
      assert.are.equal(1, #services.nginx.ports)
    end)

    it("points nginx at both API nodes and mounts folders that exist", function()
      local ups = services.nginx.environment.FH_UPSTREAMS
      for _, api in ipairs { "api1", "api2" } do
        assert.is_truthy(ups:find(api .. ":" .. services[api].environment.PORT, 1, true), ups)
      end
      -- the configuration comes from deploy/nginx through deploy/nginx/render
      local mounted = false
      for _, v in ipairs(services.nginx.volumes) do mounted = mounted or v:match("^%./nginx:/etc/flashhost%-nginx") ~= nil end
      assert.is_true(mounted, "deploy/nginx is mounted at /etc/flashhost-nginx")
      assert.matches("/etc/flashhost%-nginx/render ", services.nginx.entrypoint[3])
      local declared = compose.volumes or {}
      for name, svc in pairs(services) do
        for _, v in ipairs(svc.volumes or {}) do
          local src = v:match("^([^:]+):")
          if src:match("^%.") then
            assert.is_true(is_dir("deploy/" .. src) or exists("deploy/" .. src), name .. " mounts missing " .. src)
          else
            assert.is_truthy(declared[src] ~= nil, name .. " uses undeclared volume " .. src)
          end
        end
      end
      -- Prometheus reads the compose variant of its config (targets are the
      -- compose services, not 127.0.0.1) through its mount
      local cfg = services.prometheus.command[1]:match("^%-%-config%.file=/etc/prometheus/(.+)$")
      assert.are.equal("prometheus-compose.yml", cfg)
      assert.is_true(exists("deploy/prometheus/" .. cfg))
      local text = assert(io.open("deploy/prometheus/" .. cfg)):read("*a")
      for _, target in ipairs { "api1:9145", "api2:9145", "order-worker:9146", "cleanup:9147" } do
        assert.truthy(text:find(target, 1, true), cfg .. " scrapes " .. target)
        local svc = target:match("^([%w%-]+)")
        assert.is_table(services[svc], "service " .. svc .. " exists")
      end
    end)
  end)

  describe("Dockerfile", function()
    local text = read("deploy/Dockerfile")
    local first = assert(text:find("\nFROM ", 1, true))
    local second = assert(text:find("\nFROM ", first + 1, true), "a second stage")
    local build, runtime = text:sub(first, second), text:sub(second + #"\nFROM ")

    it("builds on Debian 12 with the build packages of scripts/deps", function()
      assert.matches("\nFROM debian:12 AS build\n", "\n" .. text)
      assert.matches("^debian:12%-slim\n", runtime)
      local deps = deps_packages()
      local installed = {}
      for name in build:match("apt%-get install(.-)\n%s*&& rm"):gmatch("[%w%.%+%-]+") do
        if not name:match("^%-") then installed[name] = true end
      end
      for name in pairs(installed) do assert.is_true(deps[name], name .. " is not in scripts/deps") end
      for name in pairs(deps) do
        if name:match("%-dev$") then assert.is_true(installed[name], name .. " missing from the build stage") end
      end
      assert.is_true(installed.luajit2, "CMake needs the luajit program")
    end)

    it("ships the runtime libraries and what the apps load", function()
      for _, lib in ipairs { "libuv1", "libluajit2%-5%.1%-2", "lua%-cjson", "libhiredis", "librdkafka1",
        "libmariadb3", "libhttp%-parser", "libjwt" } do
        assert.matches(lib, runtime)
      end
      for src in runtime:gmatch("\nCOPY (%S+) %S+") do
        if src ~= "--from=build" then assert.is_true(exists(src), "COPY " .. src) end
      end
      assert.matches("\nUSER %d+", runtime) -- numeric, for runAsNonRoot
    end)
  end)

  describe("k8s", function()
    local objects = {}
    local kust = load_all("deploy/k8s/kustomization.yaml")[1]
    for _, f in ipairs(kust.resources) do
      for _, d in ipairs(load_all("deploy/k8s/" .. f)) do objects[#objects + 1] = d end
    end
    local function find(kind, name)
      for _, o in ipairs(objects) do
        if o.kind == kind and (not name or o.metadata.name == name) then return o end
      end
    end
    local function all(kind)
      local out = {}
      for _, o in ipairs(objects) do if o.kind == kind then out[#out + 1] = o end end
      return out
    end
    local function subset(small, big)
      for k, v in pairs(small) do if big[k] ~= v then return false end end
      return true
    end

    it("lists every manifest in the kustomization, all in the flashhost namespace", function()
      local listed = {}
      for _, f in ipairs(kust.resources) do listed["deploy/k8s/" .. f] = true end
      for _, f in ipairs(files_under("deploy/k8s", "%.ya?ml$")) do
        if not f:match("kustomization") then assert.is_true(listed[f], f .. " is not in kustomization.yaml") end
      end
      assert.is_table(find("Namespace", "flashhost"))
      for _, o in ipairs(objects) do
        if o.kind ~= "Namespace" then assert.are.equal("flashhost", o.metadata.namespace, o.kind .. " " .. o.metadata.name) end
      end
    end)

    it("wires workloads to the settings, the secret and their own labels", function()
      local cm, secret = find("ConfigMap", "flashhost-env"), find("Secret", "flashhost-secrets")
      for _, k in ipairs { "REDIS_URL", "KAFKA_BROKERS", "MYSQL_HOST", "MYSQL_PORT", "MYSQL_USER", "MYSQL_DATABASE", "ADMIN_HOST" } do
        assert.is_truthy(cm.data[k], "ConfigMap " .. k)
      end
      assert.is_truthy(secret.stringData.MYSQL_PASSWORD)
      -- the placeholder the API refuses, so a forgotten secret cannot go live
      assert.are.equal(require("lib.auth").PLACEHOLDER_SECRET, secret.stringData.JWT_SECRET)
      local workloads = {}
      for _, kind in ipairs { "StatefulSet", "Deployment", "Job" } do
        for _, w in ipairs(all(kind)) do workloads[#workloads + 1] = w end
      end
      assert.is_true(#workloads >= 5)
      for _, w in ipairs(workloads) do
        local pod = w.spec.template
        if w.spec.selector then
          assert.is_true(subset(w.spec.selector.matchLabels, pod.metadata.labels), w.metadata.name .. " selector")
        end
        for _, c in ipairs(pod.spec.containers) do
          for _, ref in ipairs(c.envFrom or {}) do
            if ref.configMapRef then assert.is_table(find("ConfigMap", ref.configMapRef.name)) end
            if ref.secretRef then assert.is_table(find("Secret", ref.secretRef.name)) end
          end
          local cmd = table.concat(c.command or {}, " ") .. " " .. table.concat(c.args or {}, " ")
          local app = cmd:match("(app/[%w_]+%.lua)") or cmd:match("(scripts/[%w_%.%-]+)")
          assert.is_truthy(app and exists(app), w.metadata.name .. " runs " .. tostring(app))
          local admin
          for _, e in ipairs(c.env or {}) do if e.name == "ADMIN_PORT" then admin = tonumber(e.value) end end
          if admin then
            local open = false
            for _, p in ipairs(c.ports or {}) do open = open or p.containerPort == admin end
            assert.is_true(open, w.metadata.name .. " admin port")
            assert.are.equal(tostring(admin), pod.metadata.annotations["prometheus.io/port"])
          end
        end
      end
    end)

    it("runs the API as a StatefulSet whose ordinal is the NODE_ID, behind a Service", function()
      local api = find("StatefulSet", "flashhost-api")
      assert.is_table(api)
      local c = api.spec.template.spec.containers[1]
      local script = table.concat(c.args, "\n")
      assert.matches("NODE_ID=\"%${HOSTNAME##%*%-}\"", script)
      assert.matches("export NODE_ID", script)
      assert.matches("exec /usr/local/bin/flashhost app/purchase.lua", script)
      local headless = find("Service", api.spec.serviceName)
      assert.are.equal("None", headless.spec.clusterIP)
      local svc = find("Service", "flashhost-api")
      assert.is_true(subset(svc.spec.selector, api.spec.template.metadata.labels))
      local named = {}
      for _, p in ipairs(c.ports) do named[p.name] = p.containerPort end
      for _, s in ipairs(all("Service")) do
        for _, p in ipairs(s.spec.ports) do
          assert.are.equal(3000, named[p.targetPort] or p.targetPort, s.metadata.name .. " exposes only the API port")
        end
      end
    end)

    it("scales the API on CPU within the NODE_ID range, order workers within the partitions", function()
      local hpa = find("HorizontalPodAutoscaler", "flashhost-api")
      assert.are.equal("StatefulSet", hpa.spec.scaleTargetRef.kind)
      assert.is_table(find("StatefulSet", hpa.spec.scaleTargetRef.name))
      assert.is_true(hpa.spec.maxReplicas <= 32 and hpa.spec.minReplicas >= 2)
      assert.are.equal("cpu", hpa.spec.metrics[1].resource.name)
      local partitions = tonumber(read("scripts/topics.lua"):match('name = "reservations", partitions = (%d+)'))
      local ow = find("Deployment", "flashhost-order-worker")
      assert.is_true(ow.spec.replicas >= 2 and ow.spec.replicas <= partitions)
      assert.is_true(find("Deployment", "flashhost-cleanup").spec.replicas >= 2)
    end)
  end)

  describe("nginx.conf", function()
    local conf = read("deploy/nginx/nginx.conf")
    local function directives(text) return (text:gsub("#[^\n]*", "")) end
    local live = directives(conf)

    it("keeps upstream connections alive and bounds bodies", function()
      assert.matches("proxy_http_version 1%.1;", live)
      assert.matches('proxy_set_header Connection "";', live)
      assert.matches("client_max_body_size 16k;", live)
      assert.matches("proxy_set_header X%-Request%-Id %$fh_request_id;", live)
      assert.matches("keepalive %$keepalive", read("deploy/nginx/render"))
    end)

    it("never passes a sent POST to a second node", function()
      local nu = live:match("proxy_next_upstream ([^;]+);")
      assert.is_truthy(nu)
      assert.is_nil(nu:find("non_idempotent", 1, true))
      assert.is_nil(nu:find("http_", 1, true), "a node's own answers are final")
    end)

    it("rate-limits the purchase route only, and never proxies metrics or admin", function()
      local n = 0
      for _ in live:gmatch("limit_req zone=") do n = n + 1 end
      assert.are.equal(1, n)
      assert.matches("location = /api/v1/flash/purchase {%s*limit_req zone=", live)
      local metrics = live:match("location = /metrics {(.-)}")
      local admin = live:match("location %^~ /admin/ {(.-)}")
      assert.matches("return 404", metrics)
      assert.matches("return 403", admin)
      assert.is_nil(metrics:find("proxy_pass", 1, true))
      assert.is_nil(admin:find("proxy_pass", 1, true))
    end)
  end)
end)
