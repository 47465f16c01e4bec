terraform {
  required_version = ">= 1.5"
  required_providers {
    # The public provider for generic REST APIs: each ShiftDesk object is a restapi_object
    # (POST to create, GET, PUT and DELETE on PATH/ID).
    restapi = {
      source  = "Mastercard/restapi"
      version = "3.0.0"
    }
  }
}
