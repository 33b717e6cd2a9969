// Where the page finds the API. The cloud deployment overwrites this file.
//   api:    base URL of the API; "" means this page's own origin (as `imgsearch serve` runs it)
//   upload: "direct"    POST /api/images with the file
//           "presigned" POST /api/uploads for an S3 presigned POST, then poll /api/uploads/status
window.IMGSEARCH_CONFIG = { api: "", upload: "direct" };
