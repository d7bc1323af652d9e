/* Swagger UI over the app's own /openapi.json, started from this file
 * rather than an inline script (the /docs CSP allows no inline script). */
"use strict";

window.addEventListener("DOMContentLoaded", function () {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // The spec is never sent to a validator on another host.
    validatorUrl: null,
  });
});
