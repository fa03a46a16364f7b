-- Argo CD health of a CRMessenger CrmBinding.
local hs = { status = "Progressing", message = "Waiting for the operator to report" }
if obj.status == nil then
  return hs
end
if obj.metadata.generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < obj.metadata.generation) then
  hs.message = "Waiting for the operator to act on generation " .. obj.metadata.generation
  return hs
end
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then
      if c.status == "True" then
        hs.status = "Healthy"
        hs.message = c.message
      elseif c.status == "False" then
        hs.status = "Degraded"
        hs.message = c.reason .. ": " .. c.message
      end
      return hs
    end
  end
end
return hs
