-- Argo CD health of a CRMessenger MessengerAccount.
local hs = { status = "Progressing", message = "Waiting for the operator to report" }
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: the connector is stopped"
  return hs
end
if obj.status == nil then
  return hs
end
if obj.metadata.generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < obj.metadata.generation) then
  hs.message = "Waiting for the operator to act on generation " .. obj.metadata.generation
  return hs
end
local ready = nil
local loggedIn = nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then ready = c end
    if c.type == "LoggedIn" then loggedIn = c end
  end
end
if ready == nil then
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
-- A new account waits for a person to sign it in: that is progress, not a failure.
-- One that was signed in and got logged out is broken until someone acts.
if loggedIn ~= nil and loggedIn.status ~= "True" then
  local r = loggedIn.reason
  if r == "WaitingForQrScan" or r == "CodeRequired" or r == "PasswordRequired" or r == "Starting" then
    hs.message = "Waiting for a person to sign in: " .. loggedIn.message
    return hs
  end
end
local phase = obj.status.phase
if phase == "Pending" or phase == "Terminating" or ready.reason == "WaitingForBinding" then
  hs.message = ready.message
  return hs
end
hs.status = "Degraded"
hs.message = ready.reason .. ": " .. ready.message
return hs
